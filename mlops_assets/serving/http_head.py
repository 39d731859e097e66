"""A request head read the way `http.server` does, without the `email` parser.

`BaseHTTPRequestHandler.parse_request` reads the header lines with `http.client.parse_headers`,
which hands them to the `email` package's feed parser: for the four or five headers of a
scoring request that costs more than the lookup of the card's features. `parse_head` reads the
same lines under the same limits (65,536 bytes a line, 100 lines) into `Headers`, a mapping
whose `get` ignores the case of names and gives a repeated header's first value, as
`email.message.Message.get` does; obsolete folded lines continue the previous value.
"""

from __future__ import annotations

from typing import Any, BinaryIO

# The limits of `http.client`.
MAX_LINE = 65_536
MAX_HEADERS = 100


class HeadError(ValueError):
    """A request head breaks a limit: `status` says how to answer (431)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class Headers:
    """Request headers: `get(name, default)` by name in any case, first value of a repeat."""

    __slots__ = ("_items", "_values")

    def __init__(self, items: list[tuple[str, str]]) -> None:
        self._items = items
        self._values: dict[str, str] = {}
        for name, value in items:
            self._values.setdefault(name.lower(), value)

    def get(self, name: str, default: Any = None) -> Any:
        """The first value of header `name` (any case), else `default`."""
        return self._values.get(name.lower(), default)

    def __getitem__(self, name: str) -> str | None:
        return self._values.get(name.lower())

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._values

    def items(self) -> list[tuple[str, str]]:
        """Every header as received (name, value), in order."""
        return list(self._items)

    def __str__(self) -> str:
        return "".join(f"{name}: {value}\n" for name, value in self._items)


def parse_head(stream: BinaryIO) -> Headers:
    """Read header lines up to the blank line that ends them.

    Raises:
        HeadError: A line longer than `MAX_LINE` or more than `MAX_HEADERS` lines (431).
    """
    items: list[tuple[str, str]] = []
    lines = 0
    while True:
        line = stream.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise HeadError(431, "Line too long")
        if line in (b"\r\n", b"\n", b""):
            return Headers(items)
        lines += 1
        if lines > MAX_HEADERS:
            raise HeadError(431, f"got more than {MAX_HEADERS} headers")
        text = line.decode("iso-8859-1").rstrip("\r\n")
        if text[:1] in (" ", "\t"):
            if items:
                name, value = items[-1]
                items[-1] = (name, f"{value} {text.strip()}")
            continue
        name, colon, value = text.partition(":")
        if not colon or not name or name != name.strip():
            continue  # no header line (no name, or spaces before the colon): skipped
        items.append((name, value.lstrip(" \t")))
