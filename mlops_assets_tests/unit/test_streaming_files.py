from mlops_assets.lakehouse.landing import is_partial
from mlops_assets.serving.streaming import landed_files


def test_names_a_writer_is_still_writing_are_partial():
    for name in (".feed.csv", "feed.csv.tmp", "feed.csv.PART", "_feed.csv", "~feed.csv"):
        assert is_partial(name), name
    assert not is_partial("transactions_2026-01-01_000.csv")


def test_only_complete_files_of_the_newest_days_are_listed(tmp_path):
    for day in ("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"):
        folder = tmp_path / "transactions" / day
        folder.mkdir(parents=True)
        (folder / "a.csv").write_text("x")
        (folder / "b.csv.tmp").write_text("x")
    (tmp_path / "transactions" / ".staging").mkdir()
    assert landed_files(tmp_path, lookback_days=3) == [
        "transactions/2026-01-02/a.csv",
        "transactions/2026-01-03/a.csv",
        "transactions/2026-01-04/a.csv",
    ]
    assert landed_files(tmp_path / "none") == []
