"""`mlops sql` and `lakehouse.sql` on a small lake built from simulated landing days."""

import csv
import datetime
import io
import json

import dagster as dg
import polars as pl
import pytest

from mlops_assets.cli import main
from mlops_assets.definitions import build_definitions
from mlops_assets.defs.runner import run_days
from mlops_assets.lakehouse.catalog import Catalog, TableRef
from mlops_assets.lakehouse.delta_io import append_table
from mlops_assets.lakehouse.sql import SqlError, parse_at, query, render, rewrite
from mlops_assets.settings import load_settings
from mlops_assets.simulate import Scenario, simulate

START = datetime.date(2026, 1, 1)
DAYS = [START + datetime.timedelta(days=i) for i in range(3)]


@pytest.fixture(scope="module")
def lake(tmp_path_factory):
    """Three demo days through bronze, silver and gold in dev; one small table in prod."""
    root = tmp_path_factory.mktemp("sql")
    settings = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "dev"})
    scenario = Scenario.demo(days=len(DAYS), transactions_per_day=2_000, seed=11, start_date=START)
    simulate(scenario, settings.landing_root)
    defs = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        assert all(r.success for r in run_days(defs, DAYS, instance, log_level="ERROR"))
    prod = load_settings({"MLOPS_DATA_ROOT": str(root), "MLOPS_ENV": "prod"})
    uri = Catalog(prod).uri_for_write(TableRef("gold", "merchant_category_daily"))
    append_table(uri, pl.DataFrame({"merchant_category": ["fuel", "travel"], "n": [5, 7]}))
    return settings, prod


def table(settings, layer, name, version=None) -> pl.DataFrame:
    return pl.read_delta(str(settings.lake_root / layer / name), version=version)


def test_a_join_across_layers_matches_the_tables(lake):
    settings, _ = lake
    # The bronze rows that silver refused, by the column at fault.
    result = query(
        settings,
        """
        select q."column", count(*) as quarantined, count(distinct b.card_id) as cards
        from quarantine.silver_transactions q
        join bronze.transactions b
          on q._source_file = b._source_file and q._line_number = b._line_number
        group by q."column" order by q."column"
        """,
    )
    bronze = table(settings, "bronze", "transactions")
    quarantine = table(settings, "quarantine", "silver_transactions")
    expected = (
        quarantine.join(bronze, on=["_source_file", "_line_number"])
        .group_by("column")
        .agg(pl.len().alias("quarantined"), pl.col("card_id").n_unique().alias("cards"))
        .sort("column")
    )
    assert result.frame["quarantined"].sum() == quarantine.height > 0
    assert result.frame.rows() == expected.rows()
    assert {u.name for u in result.tables} == {
        "dev.bronze.transactions",
        "dev.quarantine.silver_transactions",
    }


def test_a_cte_joined_to_gold_matches_polars(lake):
    settings, _ = lake
    result = query(
        settings,
        """
        with daily as (
            select event_date, merchant_category, count(*) as n
            from silver.transactions group by event_date, merchant_category
        )
        select d.event_date, d.merchant_category, d.n, g.transactions
        from daily d, gold.merchant_category_daily g
        where d.event_date = g.event_date and d.merchant_category = g.merchant_category
        order by 1, 2
        """,
    )
    daily = (
        table(settings, "silver", "transactions")
        .group_by("event_date", "merchant_category")
        .len("n")
    )
    gold = table(settings, "gold", "merchant_category_daily")
    expected = (
        daily.join(gold, on=["event_date", "merchant_category"])
        .select("event_date", "merchant_category", "n", "transactions")
        .sort("event_date", "merchant_category")
    )
    assert result.frame.height == gold.height > 0
    assert result.frame.rows() == expected.rows()


def test_time_travel_by_version_in_the_name_and_by_at(lake):
    settings, _ = lake
    sql = "select landing_date, count(*) as n from silver.transactions@1 group by 1"
    first = query(settings, sql).frame
    assert first["landing_date"].to_list() == [DAYS[0]]
    assert first["n"].item() == table(settings, "silver", "transactions", 1).height
    pinned = query(
        settings,
        "select landing_date, count(*) as n from silver.transactions group by 1",
        at=parse_at(["silver.transactions=1"]),
    ).frame
    assert pinned.rows() == first.rows()
    # The same table at two versions in one query.
    both = query(
        settings,
        "select (select count(*) from silver.transactions@1) as then, "
        "(select count(*) from silver.transactions) as now",
    ).frame
    assert both.row(0) == (first["n"].item(), table(settings, "silver", "transactions").height)


def test_a_version_beyond_the_table_is_named(lake):
    settings, _ = lake
    with pytest.raises(SqlError, match=r"silver.transactions@99: .* versions 0 to 3"):
        query(settings, "select * from silver.transactions@99")
    with pytest.raises(SqlError, match="a version is @<number>"):
        query(settings, "select * from silver.transactions@latest")
    with pytest.raises(SqlError, match="--at 'silver.transactions=x': expected"):
        parse_at(["silver.transactions=x"])
    with pytest.raises(SqlError, match="--at gold.merchant_category_daily: the query does not"):
        query(settings, "select 1 from silver.labels", at={"gold.merchant_category_daily": 1})


def test_bad_table_names_are_named(lake):
    settings, _ = lake
    with pytest.raises(SqlError, match=r"silver\.nope: no Delta table in dev .*silver\.labels"):
        query(settings, "select * from silver.nope")
    with pytest.raises(SqlError, match="'lake' is not a layer"):
        query(settings, "select * from lake.transactions")
    with pytest.raises(SqlError, match="'qa' is not an environment"):
        query(settings, "select * from qa.silver.transactions")
    with pytest.raises(SqlError, match=r"^SQL: .*selec"):
        query(settings, "selec * from silver.transactions")
    with pytest.raises(SqlError, match="ColumnNotFound.*nope"):
        query(settings, "select nope from silver.transactions")


def test_names_outside_table_positions_are_left_alone():
    rewritten = rewrite(
        "select s.amount, 'silver.labels' as t from silver.transactions s -- gold.x\n"
        "where s.card_id in (select card_id from bronze.transactions)",
        "dev",
    )
    assert rewritten.sql == (
        "select s.amount, 'silver.labels' as t from \"dev.silver.transactions\" s -- gold.x\n"
        'where s.card_id in (select card_id from "dev.bronze.transactions")'
    )


def test_table_functions_reading_files_are_refused(lake, tmp_path):
    dev, prod = lake
    # A parquet file of dev's: prod may not get at it by path either.
    path = tmp_path / "dev_rows.parquet"
    pl.DataFrame({"x": [1]}).write_parquet(path)
    for sql in (
        f"select * from read_parquet('{path}')",
        f"select * from gold.merchant_category_daily join read_csv('{path}') on true",
    ):
        with pytest.raises(SqlError, match=r"table function read_\w+\(\.\.\.\) is refused"):
            query(prod, sql)
    # A CTE's name in table position stays the engine's business.
    with_cte = "with t as (select 1 as n) select n from t"
    assert query(prod, with_cte).frame["n"].to_list() == [1]


def test_another_environment_reads_follow_the_policy(lake):
    dev, prod = lake
    # dev may read prod.
    rows = query(dev, "select sum(n) as n from prod.gold.merchant_category_daily").frame
    assert rows["n"].item() == 12
    # prod may not read dev, whatever the query.
    with pytest.raises(SqlError, match="dev.silver.transactions: .*'prod' may not read"):
        query(prod, "select count(*) from dev.silver.transactions")
    # In prod, layer.table is prod's own table.
    assert query(prod, "select count(*) as n from gold.merchant_category_daily").frame.item() == 2


def test_formats_and_limit(lake):
    settings, _ = lake
    sql = (
        "select merchant_category, count(*) as n, avg(amount) as mean_amount "
        "from silver.transactions group by 1 order by n desc, merchant_category"
    )
    result = query(settings, sql, limit=3)
    assert result.frame.height == 3 and result.truncated
    assert not query(settings, sql, limit=100).truncated
    rows = list(csv.DictReader(io.StringIO(render(result.frame, "csv"))))
    assert [r["merchant_category"] for r in rows] == result.frame["merchant_category"].to_list()
    data = json.loads(render(result.frame, "json"))
    assert [d["n"] for d in data] == result.frame["n"].to_list()
    lines = render(result.frame, "table").splitlines()
    assert lines[0].split() == ["merchant_category", "n", "mean_amount"]
    assert len(lines) == 2 + 3 and len({len(line) for line in lines[1:]}) == 1
    with pytest.raises(SqlError, match="format 'xml'"):
        render(result.frame, "xml")


def test_the_command(lake, monkeypatch, capsys):
    settings, _ = lake
    monkeypatch.setenv("MLOPS_DATA_ROOT", str(settings.data_root))
    monkeypatch.setenv("MLOPS_ENV", "dev")
    sql = "select landing_date, count(*) as n from silver.transactions group by 1 order by 1"
    assert main(["sql", sql, "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [row["landing_date"] for row in out] == [d.isoformat() for d in DAYS]
    assert main(["sql", sql, "--at", "silver.transactions=2", "--limit", "1"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines()[2].split()[0] == DAYS[0].isoformat()
    assert "more rows exist" in captured.err and "dev.silver.transactions@2" in captured.err
    assert main(["sql", "select * from silver.nope"]) == 2
    assert "mlops sql: table silver.nope: no Delta table" in capsys.readouterr().err
