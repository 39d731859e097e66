"""`scoring.made_ahead`: jobs run by a few threads ahead of the consumer, results in order."""

import threading
import time

import pytest

from mlops_assets.serving.scoring import made_ahead


def test_results_come_in_the_jobs_order_whatever_order_they_finish_in():
    def job(i):
        def run():
            time.sleep(0.05 if i % 2 == 0 else 0.0)  # even jobs finish after the odd ones
            return i

        return run

    assert list(made_ahead((job(i) for i in range(8)), workers=2)) == list(range(8))


def test_at_most_ahead_jobs_are_started_before_the_consumer_takes_one():
    started = []
    release = threading.Event()

    def job(i):
        def run():
            started.append(i)
            release.wait(5)
            return i

        return run

    results = made_ahead((job(i) for i in range(10)), workers=2, ahead=3)
    taker = threading.Thread(target=lambda: next(results))
    taker.start()
    time.sleep(0.3)
    # Two workers run jobs 0 and 1; job 2 waits for a worker; nothing beyond is submitted.
    assert sorted(started) == [0, 1]
    release.set()
    taker.join(5)
    assert list(results) == list(range(1, 10))


def test_a_job_error_is_raised_at_its_place_and_the_rest_is_cancelled():
    ran = []

    def job(i):
        def run():
            ran.append(i)
            if i == 2:
                raise ValueError("chunk 2 is broken")
            return i

        return run

    got = []
    with pytest.raises(ValueError, match="chunk 2 is broken"):
        for result in made_ahead((job(i) for i in range(100)), workers=2):
            got.append(result)
    assert got == [0, 1]
    assert max(ran) < 10  # the jobs beyond the window were never submitted


def test_stopping_early_leaves_no_thread_behind():
    results = made_ahead((lambda i=i: i for i in range(1000)), workers=2)
    assert [next(results), next(results)] == [0, 1]
    results.close()
    assert not [t for t in threading.enumerate() if t.name.startswith("made-ahead")]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"workers": 0}, "workers must be positive, got 0"),
        ({"workers": 1, "ahead": 0}, "ahead must be positive, got 0"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        next(made_ahead(iter([lambda: 1]), **options))
