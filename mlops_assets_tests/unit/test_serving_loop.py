"""How the event-loop server frames requests out of the bytes a connection has sent."""

from mlops_assets.serving.loop_server import _MAX_HEAD, _request_length
from mlops_assets.serving.requests import MAX_INVOCATION_BYTES


def head(*lines: str) -> bytes:
    return ("\r\n".join(["POST /v1/score HTTP/1.1", *lines]) + "\r\n\r\n").encode()


def test_a_request_is_whole_once_its_body_is():
    request = head("Host: x", "Content-Length: 5") + b"12345"
    for cut in range(len(request)):
        assert _request_length(bytearray(request[:cut])) is None, cut
    assert _request_length(bytearray(request)) == len(request)
    # Pipelined requests: the first one's length only.
    assert _request_length(bytearray(request + request)) == len(request)


def test_header_names_are_case_insensitive_and_a_get_has_no_body():
    request = head("content-LENGTH: 2") + b"{}"
    assert _request_length(bytearray(request)) == len(request)
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    assert _request_length(bytearray(get + b"GET")) == len(get)


def test_what_the_handler_refuses_is_handed_over_without_a_body():
    # Chunked, a length that is no number, a negative or too large length: the head alone
    # goes to the handler, which answers 411, 400 or 413 and closes the connection.
    for line in (
        "Transfer-Encoding: chunked",
        "Content-Length: ten",
        "Content-Length: -1",
        f"Content-Length: {MAX_INVOCATION_BYTES + 1}",
    ):
        request = head(line)
        assert _request_length(bytearray(request + b"more")) == len(request), line


def test_a_head_without_end_is_handed_over_once_too_long():
    assert _request_length(bytearray(b"GET /" + b"a" * 1000)) is None
    endless = bytearray(b"GET /" + b"a" * (_MAX_HEAD + 1))
    assert _request_length(endless) == len(endless)
