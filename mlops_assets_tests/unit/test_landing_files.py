"""Reading landing files as exporters write them: every kind of file, record by record."""

import datetime
import gzip
import json
import threading

import narwhals as nw
import polars as pl
import pytest

from mlops_assets.lakehouse.landing import (
    MAX_LINE_BYTES,
    LandingFileChangedError,
    read_landing_file,
)
from mlops_assets.transforms.bronze import RESCUED, split_lines, split_records

NOW = datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC)
REQUIRED = ("id", "amount")
COLUMNS = ("id", "amount", "note")


def read(tmp_path, data: bytes, name: str = "a.csv", **options):
    path = tmp_path / "transactions" / "2026-01-01" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return read_landing_file(path, tmp_path, NOW, required=REQUIRED, **options)


def split(landing, portable: bool = False):
    """The file's bronze records and rejects (polars), checked equal on both paths."""
    records, rejects = split_records(nw.from_native(landing.lines), landing.header, COLUMNS)
    other = split_records(nw.from_native(landing.lines), landing.header, COLUMNS, portable=True)
    assert records.to_native().equals(other[0].to_native())
    assert rejects.to_native().equals(other[1].to_native())
    return records.to_native(), rejects.to_native()


def values(records: pl.DataFrame) -> list[dict]:
    return records.select(*COLUMNS, RESCUED, "_line_number").to_dicts()


def reasons(rejects: pl.DataFrame) -> dict[int, str]:
    return dict(zip(rejects["_line_number"], rejects["reason"], strict=True))


def test_a_byte_order_mark_is_dropped_from_the_header(tmp_path):
    landing = read(tmp_path, b"\xef\xbb\xbfid,amount\nt1,1.5\n")
    assert landing.header == ("id", "amount")
    records, rejects = split(landing)
    assert values(records) == [
        {"id": "t1", "amount": "1.5", "note": None, RESCUED: None, "_line_number": 2}
    ]
    assert rejects.height == 0


def test_crlf_and_lf_both_end_lines(tmp_path):
    landing = read(tmp_path, b"id,amount\r\nt1,1\r\nt2,2\nt3,3\r\n")
    records, _ = split(landing)
    assert records["amount"].to_list() == ["1", "2", "3"]
    assert records["_line_number"].to_list() == [2, 3, 4]


def test_a_quoted_field_may_hold_the_separator(tmp_path):
    landing = read(tmp_path, b'id,amount,note\nt1,1,"a, b"\nt2,2,plain\n')
    records, rejects = split(landing)
    assert records["note"].to_list() == ["a, b", "plain"]
    assert rejects.height == 0


def test_a_quoted_field_may_span_lines_and_is_one_record_numbered_by_its_first(tmp_path):
    landing = read(
        tmp_path, b'id,amount,note\r\nt1,1,"first\r\nsecond\nthird"\r\nt2,2,x\r\nt3,3,y\n'
    )
    records, rejects = split(landing)
    assert values(records) == [
        {
            "id": "t1",
            "amount": "1",
            "note": "first\r\nsecond\nthird",
            RESCUED: None,
            "_line_number": 2,
        },
        {"id": "t2", "amount": "2", "note": "x", RESCUED: None, "_line_number": 5},
        {"id": "t3", "amount": "3", "note": "y", RESCUED: None, "_line_number": 6},
    ]
    assert rejects.height == 0
    assert landing.lines.height == 3  # records, not physical lines


def test_a_doubled_quote_is_a_quote(tmp_path):
    landing = read(tmp_path, b'id,amount,note\nt1,1,"he said ""hi"""\nt2,2,"""x"",y"\n')
    records, _ = split(landing)
    assert records["note"].to_list() == ['he said "hi"', '"x",y']


def test_a_quote_inside_an_unquoted_field_is_kept_as_it_is(tmp_path):
    landing = read(tmp_path, b'id,amount,note\nt1,1,5" screen\nt2,2,x\n')
    records, rejects = split(landing)
    assert records["note"].to_list() == ['5" screen', "x"]
    assert rejects.height == 0


def test_a_malformed_quoted_record_is_rejected_alone(tmp_path):
    landing = read(tmp_path, b'id,amount,note\nt1,1,"ab"c\nt2,"2",x,extra\nt3,3,z\n')
    records, rejects = split(landing)
    assert records["id"].to_list() == ["t3"]
    assert reasons(rejects) == {
        2: "malformed quoted field: ',' expected after '\"'",
        3: "expected 3 fields, found 4",
    }


def test_a_gzip_file_is_read_decompressed_by_its_magic_bytes(tmp_path):
    text = b'id,amount\nt1,1\nt2,"2"\n'
    for name in ("a.csv.gz", "b.csv"):
        landing = read(tmp_path, gzip.compress(text), name)
        assert landing.compressed
        records, _ = split(landing)
        assert records["amount"].to_list() == ["1", "2"]


def test_a_gz_name_without_gzip_content_or_a_corrupt_gzip_is_unusable(tmp_path):
    landing = read(tmp_path, b"id,amount\nt1,1\n", "a.csv.gz")
    assert landing.header_problem == "file is named .gz but is not gzip-compressed"
    assert landing.lines.height == 2
    truncated = gzip.compress(b"id,amount\n" + b"t1,1\n" * 1000)[:40]
    landing = read(tmp_path, truncated, "b.csv.gz")
    assert landing.header_problem.startswith("gzip-compressed file cannot be decompressed")


def test_the_header_names_columns_in_any_order_and_optional_ones_may_be_absent(tmp_path):
    landing = read(tmp_path, b"amount,id\n1,t1\n")
    records, _ = split(landing)
    assert values(records) == [
        {"id": "t1", "amount": "1", "note": None, RESCUED: None, "_line_number": 2}
    ]
    assert records.columns == [*COLUMNS, RESCUED, "_source_file", "_line_number", "_ingested_at"]


@pytest.mark.parametrize(
    ("separator", "name"), [(b";", "semicolons"), (b"\t", "tabs"), (b"|", "pipes")]
)
def test_a_file_with_another_separator_is_unusable_whole(tmp_path, separator, name):
    data = separator.join([b"id", b"amount"]) + b"\n" + separator.join([b"t1", b"1"]) + b"\n"
    landing = read(tmp_path, data)
    assert landing.header == ()
    header = data.split(b"\n")[0].decode()
    assert landing.header_problem == (
        f"header {header!r} is one column holding "
        f"{separator.decode()!r}: the file is separated by {name}, not commas"
    )
    assert landing.lines["_line_number"].to_list() == [1, 2]


def test_a_binary_file_is_unusable_whole(tmp_path):
    landing = read(tmp_path, b"id,amount\nt1,\x00\x01\x02\nt2,2\n")
    assert landing.header_problem == "file is binary: it holds NUL bytes"
    assert landing.lines.height == 3
    noise = bytes(range(128, 256)) * 20 + b"\n" + bytes(range(200, 256)) * 10
    landing = read(tmp_path, noise, "b.csv")
    assert landing.header_problem.startswith("file is binary: ")
    assert "invalid UTF-8" in landing.header_problem
    assert landing.lines.height == 2


def test_a_few_undecodable_lines_are_rejected_one_by_one(tmp_path):
    landing = read(tmp_path, b"id,amount\nt1,1\nt\xe9,2\nt3,3\n")
    assert landing.header_problem is None
    records, rejects = split(landing)
    assert records["id"].to_list() == ["t1", "t3"]
    assert reasons(rejects) == {3: "line is not valid UTF-8"}


def test_a_header_without_the_required_columns_is_unusable_whole(tmp_path):
    landing = read(tmp_path, b"id,note\nt1,x\nt2,y\n")
    assert landing.header_problem == "header 'id,note' lacks required columns amount"
    assert landing.lines["raw"].to_list() == ["id,note", "t1,x", "t2,y"]


def test_a_repeated_or_empty_column_name_is_unusable_whole(tmp_path):
    assert "repeats a column name" in read(tmp_path, b"id,amount,id\n1,2,3\n").header_problem
    assert "empty column name" in read(tmp_path, b"id,,amount\n1,2,3\n").header_problem


def test_a_quoted_header_is_read(tmp_path):
    landing = read(tmp_path, b'"id","amount","my, note"\nt1,1,x\n')
    assert landing.header == ("id", "amount", "my, note")
    records, _ = split(landing)
    assert json.loads(records[RESCUED].item()) == {"my, note": "x"}


def test_five_hundred_extra_columns_are_rescued_and_never_widen_bronze(tmp_path):
    extras = [f"extra_{i}" for i in range(500)] + ["_line_number", "AMOUNT"]
    header = ",".join(["id", "amount", *extras])
    row = ",".join(["t1", "1", *[f"v{i}" for i in range(len(extras))]])
    landing = read(tmp_path, f"{header}\n{row}\n".encode())
    records, rejects = split(landing)
    assert rejects.height == 0
    assert records.columns == [*COLUMNS, RESCUED, "_source_file", "_line_number", "_ingested_at"]
    rescued = json.loads(records[RESCUED].item())
    assert list(rescued) == extras
    assert rescued["extra_499"] == "v499"
    assert rescued["_line_number"] == "v500"
    assert records["_line_number"].item() == 2


def test_a_line_longer_than_the_bound_is_rejected_with_its_length(tmp_path):
    long = "x" * 5000
    landing = read(tmp_path, f"id,amount,note\nt1,1,{long}\nt2,2,y\n".encode(), max_line_bytes=1000)
    records, rejects = split(landing)
    assert records["id"].to_list() == ["t2"]
    assert reasons(rejects) == {2: "line is 5005 bytes long, over the 1000-byte limit"}
    # Nothing is lost: quarantine keeps the whole line.
    assert rejects["raw"].item() == f"t1,1,{long}"
    assert MAX_LINE_BYTES == 1 << 20


def test_a_line_of_two_mib_is_rejected_by_the_default_bound(tmp_path):
    landing = read(tmp_path, b"id,amount\nt1," + b"9" * (2 << 20) + b"\nt2,2\n")
    records, rejects = split(landing)
    assert records["id"].to_list() == ["t2"]
    assert reasons(rejects)[2].startswith(f"line is {(2 << 20) + 3} bytes long")


def test_an_unterminated_quoted_field_makes_the_file_unusable_whole(tmp_path):
    landing = read(tmp_path, b'id,amount,note\nt1,1,x\nt2,2,"never closed\nt3,3,z\n')
    assert landing.header_problem == (
        "unterminated quoted field: the quote opened on line 3 is never closed"
    )
    assert landing.lines["_line_number"].to_list() == [1, 2, 3, 4]


def test_split_lines_alone_rejects_a_quote_it_was_not_given_parsed(tmp_path):
    lines = pl.DataFrame({"raw": ['a,"b"'], "_utf8": [True], "_line_number": [2]})
    _, rejects = split_lines(nw.from_native(lines), ["p", "q"])
    assert rejects["reason"].to_list() == ["line holds a quote character but was not parsed as CSV"]


def test_a_file_growing_while_it_is_read_is_refused_naming_it(tmp_path):
    path = tmp_path / "transactions" / "2026-01-01" / "a.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"id,amount\n" + b"t1,1\n" * 2_000_000)
    stop = threading.Event()

    def append() -> None:
        with path.open("ab") as handle:
            while not stop.is_set():
                handle.write(b"t2,2\n")
                handle.flush()

    writer = threading.Thread(target=append)
    writer.start()
    try:
        with pytest.raises(LandingFileChangedError, match=r"a\.csv changed while it was read"):
            for _ in range(50):
                read_landing_file(path, tmp_path, NOW)
    finally:
        stop.set()
        writer.join()
