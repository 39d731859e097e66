"""SQL over the lake's Delta tables on polars' embedded SQL engine.

A query names tables as `layer.table` (the active environment), `env.layer.table` (another
environment, where the access policy allows it) and, for time travel, adds `@<version>`:
`silver.transactions@3`. `at={"silver.transactions": 3}` pins a table's version wherever the
query names it without one. Only the tables a query names are scanned, lazily
(`pl.scan_delta` with the lake's storage options, so the same query runs on the local disk
and on the object store); polars pushes filters, projections and the row limit into the scans.

    select s.merchant_category, count(*) as n
    from silver.transactions s join silver.labels l using (transaction_id)
    group by 1 order by n desc

Table references are recognized where SQL expects a table: after `FROM`, `JOIN` and the
commas of a `FROM` list. Names without a dot there (a CTE's name) are left to the engine.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass

import polars as pl

from mlops_assets.lakehouse.catalog import LAYERS, AccessDeniedError, Catalog, TableRef
from mlops_assets.lakehouse.delta_io import scan_table, table_exists, table_version
from mlops_assets.settings import ENVIRONMENTS, Settings

FORMATS = ("table", "csv", "json")

# Keywords after which the next name is a table, and those that end a FROM list.
_TABLE_AFTER = {"from", "join"}
_FROM_ENDS = {
    "where",
    "group",
    "order",
    "having",
    "limit",
    "offset",
    "union",
    "except",
    "intersect",
    "on",
    "using",
    "qualify",
    "window",
    "select",
    "fetch",
}
_TOKEN = re.compile(
    r"""
      (?P<space>\s+)
    | (?P<comment>--[^\n]*|/\*.*?\*/)
    | (?P<string>'(?:[^']|'')*')
    | (?P<quoted>"(?:[^"]|"")*")
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<version>@[A-Za-z0-9_]*)
    | (?P<other>.)
    """,
    re.VERBOSE | re.DOTALL,
)


class SqlError(ValueError):
    """A query that cannot run: an unknown or unreadable table, a bad version, bad SQL."""


@dataclass(frozen=True)
class TableUse:
    """One table a query reads: its environment, identity and version (None: the latest)."""

    env: str
    table: TableRef
    version: int | None = None

    @property
    def name(self) -> str:
        """The name the query's engine knows the table by, e.g. `prod.silver.transactions@3`."""
        base = f"{self.env}.{self.table.layer}.{self.table.name}"
        return base if self.version is None else f"{base}@{self.version}"


@dataclass(frozen=True)
class Query:
    """A query rewritten for the engine, with the tables it reads."""

    sql: str
    tables: tuple[TableUse, ...]


def parse_at(values: list[str] | tuple[str, ...]) -> dict[str, int]:
    """Parse `--at` options: `layer.table=VERSION` or `env.layer.table=VERSION`.

    Raises:
        SqlError: An option is not `name=VERSION` with a non-negative integer version.
    """
    pins: dict[str, int] = {}
    for value in values:
        name, sep, version = value.partition("=")
        if not sep or not name.strip() or not version.strip().isdigit():
            raise SqlError(
                f"--at {value!r}: expected layer.table=VERSION (e.g. silver.transactions=3)"
            )
        pins[name.strip()] = int(version)
    return pins


def _tokens(sql: str) -> Iterator[tuple[str, str]]:
    for match in _TOKEN.finditer(sql):
        kind = match.lastgroup or "other"
        if kind == "other" and match.group() == "'":
            raise SqlError("the query has a string literal without its closing quote (')")
        if kind == "other" and match.group() == '"':
            raise SqlError('the query has a quoted name without its closing quote (")')
        yield kind, match.group()


def _unquote(kind: str, text: str) -> str:
    return text[1:-1].replace('""', '"') if kind == "quoted" else text


def _resolve(parts: list[str], version_text: str | None, env: str, pins: Mapping) -> TableUse:
    """The table a dotted name in table position stands for."""
    shown = ".".join(parts) + (version_text or "")
    if len(parts) == 3:
        source, layer, name = parts
        if source not in ENVIRONMENTS:
            raise SqlError(
                f"table {shown}: {source!r} is not an environment ({', '.join(ENVIRONMENTS)})"
            )
    elif len(parts) == 2:
        source, (layer, name) = env, parts
    else:
        raise SqlError(f"table {shown}: name tables as layer.table or env.layer.table")
    if layer not in LAYERS:
        raise SqlError(f"table {shown}: {layer!r} is not a layer ({', '.join(LAYERS)})")
    try:
        table = TableRef(layer, name)
    except ValueError as error:
        raise SqlError(f"table {shown}: {error}") from None
    if version_text is not None:
        digits = version_text.removeprefix("@").removeprefix("v")
        if not digits.isdigit():
            raise SqlError(
                f"table {shown}: a version is @<number> (e.g. {layer}.{name}@3), "
                f"not {version_text!r}"
            )
        return TableUse(source, table, int(digits))
    short, full = f"{layer}.{name}", f"{source}.{layer}.{name}"
    pinned = pins.get(full, pins.get(short) if source == env else None)
    return TableUse(source, table, pinned)


def rewrite(sql: str, env: str, at: Mapping[str, int] | None = None) -> Query:
    """Replace the lake's table names in `sql` by names the engine is given the tables under.

    Args:
        sql: The query, with tables named `layer.table`, `env.layer.table`, optionally
            followed by `@<version>`.
        env: The active environment (the one of `layer.table`).
        at: Versions pinned per table name (`layer.table` or `env.layer.table`).

    Returns:
        The rewritten query and the tables it reads, each once.

    Raises:
        SqlError: A table name is not a layer's table, a version is malformed, or a table
            function (`read_parquet(...)`) would read files past the catalog.
    """
    pins = dict(at or {})
    tokens = list(_tokens(sql))
    out: list[str] = []
    uses: dict[str, TableUse] = {}
    depth = 0
    from_lists: set[int] = set()  # paren depths whose FROM list is open
    expect_table = False
    i = 0
    while i < len(tokens):
        kind, text = tokens[i]
        word = text.lower() if kind == "name" else None
        if expect_table and kind in ("name", "quoted"):
            # A dotted name: name ('.' name)*, then an optional @version.
            parts, j = [_unquote(kind, text)], i + 1
            while (
                j + 1 < len(tokens)
                and tokens[j] == ("other", ".")
                and tokens[j + 1][0] in ("name", "quoted")
            ):
                parts.append(_unquote(*tokens[j + 1]))
                j += 2
            version_text = None
            if j < len(tokens) and tokens[j][0] == "version":
                version_text, j = tokens[j][1], j + 1
            expect_table = False
            if len(parts) == 1 and version_text is None:
                if j < len(tokens) and tokens[j] == ("other", "("):
                    # read_parquet('...'), read_csv(...): a file read past the catalog
                    # and the access policy.
                    raise SqlError(
                        f"table function {text}(...) is refused: it reads files outside the "
                        "lake's catalog and its access policy; name tables as layer.table"
                    )
                out.append(text)  # a CTE's name
                i += 1
                continue
            use = _resolve(parts, version_text, env, pins)
            uses.setdefault(use.name, use)
            out.append('"' + use.name + '"')
            i = j
            continue
        if word in _TABLE_AFTER:
            expect_table = True
            if word == "from":
                from_lists.add(depth)
        elif word in _FROM_ENDS:
            from_lists.discard(depth)
            expect_table = False
        elif text == "(" and kind == "other":
            depth += 1
            expect_table = False
        elif text == ")" and kind == "other":
            from_lists = {d for d in from_lists if d < depth}
            depth -= 1
        elif text == "," and kind == "other" and depth in from_lists:
            expect_table = True
        elif kind not in ("space", "comment"):
            expect_table = False
        out.append(text)
        i += 1
    return Query("".join(out), tuple(uses.values()))


@dataclass(frozen=True)
class Result:
    """A query's rows (at most the limit), and whether more rows exist beyond it."""

    frame: pl.DataFrame
    truncated: bool
    tables: tuple[TableUse, ...]


def scan(catalog: Catalog, use: TableUse) -> pl.LazyFrame:
    """Lazily scan one table at its version, checked against the read policy.

    Raises:
        SqlError: The environment may not read the table's, the table does not exist, or
            the version is not one of the table's.
    """
    try:
        uri = catalog.uri_for_read(use.table, use.env)
    except AccessDeniedError as error:
        raise SqlError(f"table {_short(use, catalog.env)}: {error}") from None
    options = catalog.storage_options or None
    label = _short(use, catalog.env)
    if not table_exists(uri, storage_options=options):
        known = ""
        if use.env == catalog.env:
            names = ", ".join(available_tables(catalog)) or "none yet"
            known = f"; tables of {catalog.env}: {names}"
        raise SqlError(f"table {label}: no Delta table in {use.env} at {uri}{known}")
    if use.version is not None:
        latest = table_version(uri, storage_options=options)
        if latest is None or use.version > latest:
            raise SqlError(
                f"table {label}@{use.version}: {use.env}'s table has versions 0 to {latest}"
            )
    try:
        return scan_table(uri, use.version, storage_options=options)
    except Exception as error:  # delta-rs: a version whose log was cleaned up
        raise SqlError(f"table {label}: cannot read version {use.version}: {error}") from None


def available_tables(catalog: Catalog) -> list[str]:
    """`layer.table` names of the active environment's Delta tables."""
    from mlops_assets.lakehouse.summary import lake_summary

    return [row.name.replace("/", ".") for row in lake_summary(catalog.settings)]


def query(
    settings: Settings,
    sql: str,
    *,
    at: Mapping[str, int] | None = None,
    limit: int | None = None,
) -> Result:
    """Run a SQL query over the environment's lake (see the module docstring).

    Args:
        settings: The active environment's settings.
        sql: The query.
        at: Versions pinned per table name (`layer.table` or `env.layer.table`).
        limit: At most this many rows are returned (None: all of them).

    Returns:
        The rows, and whether the limit cut some off.

    Raises:
        SqlError: An unknown or unreadable table, a bad version, or SQL the engine refuses.
    """
    if not sql.strip():
        raise SqlError("the query is empty")
    if limit is not None and limit < 0:
        raise SqlError(f"the row limit must be 0 or more, not {limit}")
    catalog = Catalog(settings)
    rewritten = rewrite(sql, settings.env, at)
    for name in at or {}:
        if not any(name in (_short(u, settings.env), _full(u)) for u in rewritten.tables):
            raise SqlError(f"--at {name}: the query does not read that table")
    context = pl.SQLContext()
    for use in rewritten.tables:
        context.register(use.name, scan(catalog, use))
    try:
        lazy = context.execute(rewritten.sql, eager=False)
        frame = lazy.collect() if limit is None else lazy.head(limit + 1).collect()
    except (pl.exceptions.SQLInterfaceError, pl.exceptions.SQLSyntaxError) as error:
        raise SqlError(f"SQL: {error}") from None
    except pl.exceptions.PolarsError as error:
        raise SqlError(f"the query failed: {type(error).__name__}: {error}") from None
    truncated = limit is not None and frame.height > limit
    return Result(frame.head(limit) if truncated else frame, truncated, rewritten.tables)


def _short(use: TableUse, env: str) -> str:
    return f"{use.table.layer}.{use.table.name}" if use.env == env else _full(use)


def _full(use: TableUse) -> str:
    return f"{use.env}.{use.table.layer}.{use.table.name}"


def render(frame: pl.DataFrame, fmt: str) -> str:
    """The rows as an aligned text table, CSV, or a JSON array of objects.

    Raises:
        SqlError: `fmt` is not one of `FORMATS`.
    """
    if fmt == "csv":
        return frame.write_csv()
    if fmt == "json":
        return json.dumps(frame.to_dicts(), default=str, indent=1) + "\n"
    if fmt != "table":
        raise SqlError(f"format {fmt!r} is not one of {', '.join(FORMATS)}")
    return aligned(frame)


def aligned(frame: pl.DataFrame) -> str:
    """An aligned text table: a header, a rule, one line per row; numbers right-aligned."""
    cells = [[_cell(v) for v in row] for row in frame.iter_rows()]
    numeric = [dtype.is_numeric() for dtype in frame.dtypes]
    widths = [
        max([len(name), *(len(row[k]) for row in cells)]) for k, name in enumerate(frame.columns)
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    rows = [line(list(frame.columns)), "  ".join("-" * w for w in widths)]
    rows += [line(row) for row in cells]
    return "\n".join(rows) + "\n"


def _cell(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
