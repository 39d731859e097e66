"""The metrics' text exposition: grammar of each line, cumulative buckets, label escaping."""

import re
import threading

from mlops_assets.serving.metrics import LATENCY_BUCKETS, ServingMetrics, escape_label, sample

LINE = re.compile(
    r"^(# (HELP|TYPE) [a-zA-Z_:][a-zA-Z0-9_:]* .*"
    r'|[a-zA-Z_:][a-zA-Z0-9_:]*(\{[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
    r'(,[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*")*\})? '
    r"(?:[+-]?Inf|NaN|[+-]?\d+(?:\.\d+)?(?:e[+-]?\d+)?))$"
)


def test_render_counts_requests_and_cumulates_latency_buckets():
    metrics = ServingMetrics()
    for seconds in (0.0001, 0.003, 0.003, 0.2, 30.0):
        metrics.observe("/v1/score", "POST", 200, seconds)
    metrics.observe("/v1/score", "POST", 422, 0.001)
    metrics.predicted("dev.fraud_detector", True)
    metrics.predicted("dev.fraud_detector", False, 4)
    lines = metrics.render()
    assert all(LINE.match(line) for line in lines), [x for x in lines if not LINE.match(x)]
    text = "\n".join(lines)
    assert 'mlops_serving_requests_total{route="/v1/score",method="POST",status="200"} 5' in text
    assert 'mlops_serving_requests_total{route="/v1/score",method="POST",status="422"} 1' in text
    buckets = [
        int(line.rsplit(" ", 1)[1])
        for line in lines
        if line.startswith("mlops_serving_request_duration_seconds_bucket")
    ]
    assert len(buckets) == len(LATENCY_BUCKETS) + 1
    assert buckets == sorted(buckets) and buckets[-1] == 6
    assert 'le="0.001"} 2' in text and 'le="0.005"} 4' in text and 'le="10"} 5' in text
    assert 'mlops_serving_request_duration_seconds_count{route="/v1/score"} 6' in text
    assert 'mlops_serving_predictions_total{model="dev.fraud_detector",new_card="true"} 1' in text


def test_counts_from_many_threads_add_up():
    metrics = ServingMetrics()

    def hammer():
        for _ in range(2000):
            metrics.observe("/invocations", "POST", 200, 0.002)

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert metrics.requests() == {("/invocations", "POST", 200): 8000}


def test_label_values_are_escaped():
    assert escape_label('a"b\\c\nd') == 'a\\"b\\\\c\\nd'
    line = sample("x_total", {"model": 'we"ird\n'}, 1.5)
    assert line == 'x_total{model="we\\"ird\\n"} 1.5' and LINE.match(line)
