import datetime

from mlops_assets.lakehouse.landing import read_landing_file

NOW = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)


def test_landing_lines_keep_numbers_and_flag_undecodable_bytes(tmp_path):
    path = tmp_path / "transactions" / "2026-01-01" / "a.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"id,amount\r\nt1,1.0\r\n\r\nt2,\xe9\xff\r\nt\xc3\xa9,2\r\nt4,4")
    landing = read_landing_file(path, tmp_path, NOW)
    assert landing.header == ("id", "amount")
    assert landing.header_problem is None
    assert landing.relative == "transactions/2026-01-01/a.csv"
    rows = landing.lines.to_dicts()
    assert [r["_line_number"] for r in rows] == [2, 3, 4, 5, 6]
    assert [r["raw"] for r in rows] == ["t1,1.0", "", "t2,\ufffd\ufffd", "t\u00e9,2", "t4,4"]
    assert [r["_utf8"] for r in rows] == [True, True, False, True, True]
    assert {r["_source_file"] for r in rows} == {"transactions/2026-01-01/a.csv"}


def test_a_file_without_a_usable_header_keeps_every_line(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes(b"id,,amount\nt1,x,1\n")
    landing = read_landing_file(path, tmp_path, NOW)
    assert landing.header == ()
    assert "empty column name" in landing.header_problem
    assert landing.lines["_line_number"].to_list() == [1, 2]
    empty = tmp_path / "b.csv"
    empty.write_bytes(b"")
    assert read_landing_file(empty, tmp_path, NOW).header_problem == "file is empty"
