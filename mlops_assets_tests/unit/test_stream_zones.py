"""Streaming reads landed files by silver's contract: times without an offset need a zone."""

import datetime

from mlops_assets.serving.scoring import read_valid_lines

HEADER = "transaction_id,event_time,card_id,merchant_id,merchant_category,amount,currency,channel\n"
NOW = datetime.datetime(2026, 3, 2, tzinfo=datetime.UTC)


def landed(tmp_path, *times: str):
    folder = tmp_path / "transactions" / "2026-03-01"
    folder.mkdir(parents=True)
    lines = [f"t{i},{t},c1,m1,grocery,10.5,EUR,pos\n" for i, t in enumerate(times)]
    path = folder / "a.csv"
    path.write_text(HEADER + "".join(lines))
    return path


def test_a_time_without_offset_is_refused_unless_the_source_declares_its_zone(tmp_path):
    path = landed(tmp_path, "2026-03-01 10:00:00", "2026-03-01T10:00:00+02:00")
    lines, valid, errors = read_valid_lines(path, tmp_path, NOW)
    assert lines == 2
    assert valid["transaction_id"].to_list() == ["t1"]
    assert valid["event_time"].to_list() == [datetime.datetime(2026, 3, 1, 8, tzinfo=datetime.UTC)]
    assert errors["_line_number"].to_list() == [2]
    assert "has no UTC offset" in errors["reason"].item()

    lines, valid, errors = read_valid_lines(path, tmp_path, NOW, timezone="Europe/Berlin")
    assert errors.height == 0
    # Berlin is UTC+1 in March before the clock change.
    assert valid["event_time"].to_list() == [
        datetime.datetime(2026, 3, 1, 9, tzinfo=datetime.UTC),
        datetime.datetime(2026, 3, 1, 8, tzinfo=datetime.UTC),
    ]
