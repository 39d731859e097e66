"""`mlops backfill`: a daily job run day by day, a progress line per day, then a summary."""

from mlops_assets.cli import main
from mlops_assets.lakehouse.delta_io import table_version


def test_backfill_prints_a_line_per_day_and_a_summary(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLOPS_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("MLOPS_ENV", "dev")
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "unused"))  # restored after the test
    assert main(["simulate", "--days", "2", "--per-day", "1000"]) == 0
    capsys.readouterr()
    assert main(["backfill", "medallion_daily", "--from", "2026-01-01", "--to", "2026-01-02"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "[backfill] medallion_daily: 2 days from 2026-01-01 to 2026-01-02 in dev"
    assert lines[1].startswith("[backfill] medallion_daily 2026-01-01 (1/2): ok in ")
    assert lines[2].startswith("[backfill] medallion_daily 2026-01-02 (2/2): ok in ")
    assert lines[3].startswith("[backfill] 2 of 2 days done in ")
    assert "mlops ui" in lines[4] and str(tmp_path / "dev" / "lake") in lines[4]
    assert len(lines) == 5
    # One partition write per day (the table's creation is version 0).
    assert table_version(tmp_path / "dev" / "lake" / "silver" / "transactions") == 2


def test_backfill_names_a_bad_job_or_range(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("MLOPS_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("MLOPS_ENV", "dev")
    assert main(["backfill", "nope", "--from", "2026-01-01"]) == 2
    assert "'nope' is not a daily job; daily jobs: " in capsys.readouterr().err
    assert main(["backfill", "medallion_daily", "--from", "2026-01-02", "--to", "2026-01-01"]) == 2
    assert "--to 2026-01-01 is before --from 2026-01-02" in capsys.readouterr().err
    assert main(["backfill", "medallion_daily", "--from", "January"]) == 2
    assert "dates are YYYY-MM-DD" in capsys.readouterr().err
