"""Request heads read as `http.client.parse_headers` reads them, under the same limits."""

import http.client
import io

import pytest

from mlops_assets.serving.http_head import MAX_HEADERS, MAX_LINE, HeadError, parse_head


def both(raw: bytes):
    return parse_head(io.BytesIO(raw)), http.client.parse_headers(io.BytesIO(raw))


def test_values_equal_the_standard_library_s_whatever_the_case():
    raw = (
        b"Host: 127.0.0.1:8000\r\ncontent-type: application/json\r\nContent-Length: 12\r\n"
        b"X-Request-ID:  abc \r\nAuthorization: Bearer t\r\nX-Twice: one\r\nx-twice: two\r\n\r\n"
        b"body follows"
    )
    ours, theirs = both(raw)
    for name in ("host", "Content-Type", "CONTENT-LENGTH", "x-request-id", "Authorization"):
        assert ours.get(name) == theirs.get(name), name
    assert ours.get("X-Twice") == theirs.get("X-Twice") == "one"
    assert ours.get("Missing") is None and ours.get("Missing", "") == ""
    assert "content-length" in ours and ours["Content-Length"] == "12"


def test_the_head_ends_at_the_blank_line_and_the_body_stays_unread():
    stream = io.BytesIO(b"A: 1\n\nrest")
    assert parse_head(stream).get("a") == "1"
    assert stream.read() == b"rest"
    assert parse_head(io.BytesIO(b"")).items() == []


def test_folded_lines_continue_the_value():
    ours, theirs = both(b"X-Long: first\r\n  second\r\n\r\n")
    assert ours.get("x-long") == "first second"
    assert " ".join(theirs.get("X-Long").split()) == "first second"


def test_limits_answer_431():
    with pytest.raises(HeadError) as long_line:
        parse_head(io.BytesIO(b"A: " + b"x" * MAX_LINE + b"\r\n\r\n"))
    assert long_line.value.status == 431
    many = b"".join(f"H{i}: v\r\n".encode() for i in range(MAX_HEADERS + 1)) + b"\r\n"
    with pytest.raises(HeadError, match="more than 100 headers"):
        parse_head(io.BytesIO(many))
    with pytest.raises(http.client.HTTPException):
        http.client.parse_headers(io.BytesIO(many))
