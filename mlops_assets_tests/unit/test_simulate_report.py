"""`mlops simulate` prints a line per day and a summary; the manifests stay in their files."""

import json

from mlops_assets.cli import main
from mlops_assets.settings import load_settings
from mlops_assets.simulate import DayManifest


def test_simulate_prints_a_bounded_summary_and_the_manifest_holds_the_ids(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("MLOPS_DATA_ROOT", str(tmp_path))
    monkeypatch.setenv("MLOPS_ENV", "dev")
    assert main(["simulate", "--days", "2", "--per-day", "20000", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    # Two day lines and a six-line summary, however many ids were injected.
    assert len(lines) == 8 and len(out) < 2_000
    assert lines[0].startswith("[simulate] day 1/2 2026-01-01:") and lines[0].endswith(" s)")
    assert lines[1].startswith("[simulate] day 2/2 2026-01-02:")
    landing = load_settings().landing_root
    manifests = [DayManifest.read(path) for path in sorted((landing / "_manifests").glob("*.json"))]
    assert [m.date.isoformat() for m in manifests] == ["2026-01-01", "2026-01-02"]
    ids = [
        i
        for m in manifests
        for i in (
            *m.transaction_ids_malformed,
            *m.transaction_ids_wrong_type,
            *m.transaction_ids_missing_field,
        )
    ]
    assert len(ids) == sum(m.quarantined for m in manifests) > 100
    assert not any(i in out for i in ids)
    # The summary's counts are the manifests' sums.
    lines_total = sum(m.transaction_lines for m in manifests)
    malformed = sum(m.malformed for m in manifests)
    wrong_type = sum(m.wrong_type for m in manifests)
    assert f"{lines_total:,} lines" in out
    assert f"{malformed:,} malformed" in out and f"{wrong_type:,} wrong type" in out
    assert f"{landing / '_manifests'}/" in out
    new_cards = sum(m.new_cards for m in manifests)
    assert f"new cards (never seen before): {new_cards:,}," in out
    assert not any(i in out for m in manifests for i in m.new_card_ids)
    raw = json.loads((landing / "_manifests" / "2026-01-02.json").read_text())
    assert raw["transaction_ids_malformed"] == list(manifests[1].transaction_ids_malformed)
