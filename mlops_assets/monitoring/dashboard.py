"""The monitoring dashboard: one self-contained HTML page per environment, plotted over days.

The page shows, per day and model version, the share of drifted features and the prediction
drift (`monitoring/drift_metrics`, against the version's training reference), PR-AUC as labels
mature (`monitoring/performance`: a day's point is hollow until its labels are mature),
volumes scored, flagged and confirmed fraud caught and missed (`gold/prediction_summary`),
the alerts raised (`monitoring/alerts`) and the champion's history (`ml/model_audit`).

plotly.js is inlined once in the page's head and every figure is a `<div>` that uses it, so
the page opens from disk with nothing fetched from the network (no CDN, no MathJax, no
plotly logo link). The functions take polars frames of the tables (None where a table does
not exist yet) and import no Dagster.
"""

from __future__ import annotations

import datetime
import html
import math
from dataclasses import dataclass, field
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio
import polars as pl
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from mlops_assets.monitoring.thresholds import DEFAULT, Thresholds

# The title of each plot, in page order (the page shows each one).
DRIFT_SHARE = "Drifted feature share per day"
PREDICTION_DRIFT = "Prediction drift per day"
PR_AUC = "PR-AUC as labels mature"
VOLUMES = "Volumes: scored, flagged, fraud caught and missed"
ALERTS = "Alerts per day"
CHAMPION = "Champion history"
TITLES = (DRIFT_SHARE, PREDICTION_DRIFT, PR_AUC, VOLUMES, ALERTS, CHAMPION)
# The plotly configuration of every figure: no logo link, no cloud editing.
CONFIG = {"displaylogo": False, "showLink": False, "responsive": True}
SCORE = "score"


@dataclass(frozen=True)
class DashboardData:
    """The tables the dashboard plots (None where a table does not exist yet).

    Attributes:
        env: The environment the page is about.
        drift: `monitoring/drift_metrics` rows (`day`, `model_version`, `baseline`,
            `column`, `score`, `drifted`).
        performance: `monitoring/performance` rows (`day`, `model_version`, `pr_auc`,
            `label_share`, `mature`).
        summary: `gold/prediction_summary` rows of the monitored model (`day`,
            `model_version`, `scored`, `flagged`, `fraud_caught`, `fraud_missed`).
        alerts: `monitoring/alerts` rows (`at`, `kind`, `severity`, `window_day`, `subject`,
            `message`).
        audit: `ml/model_audit` rows of the monitored model (`at`, `version`, `action`,
            `champion_before`, `champion_after`, `who`, `why`).
        thresholds: The monitoring thresholds drawn as lines.
        model: The monitored model's registered name, for the page's headings.
        sources: Table name to the Delta version read, shown under the heading.
    """

    env: str
    drift: pl.DataFrame | None = None
    performance: pl.DataFrame | None = None
    summary: pl.DataFrame | None = None
    alerts: pl.DataFrame | None = None
    audit: pl.DataFrame | None = None
    thresholds: Thresholds = DEFAULT
    model: str = ""
    sources: dict[str, int | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Dashboard:
    """A dashboard written to disk.

    Attributes:
        path: The HTML file.
        titles: The plots' titles, in page order.
        empty: Titles of the plots that had no data yet.
        size: The file's size in bytes.
        days: Days the page covers (first, last), None without monitored days.
    """

    path: Path
    titles: tuple[str, ...]
    empty: tuple[str, ...]
    size: int
    days: tuple[datetime.date, datetime.date] | None


def _has(frame: pl.DataFrame | None) -> bool:
    return frame is not None and frame.height > 0


def drift_by_day(drift: pl.DataFrame) -> pl.DataFrame:
    """Per day and version: the share of drifted features and the prediction drift score.

    Only the comparison with the training reference counts (baseline `training`), as the
    drift sensor reads it; the prediction (`score`) is not a feature.

    Returns:
        `day`, `model_version`, `drifted_share`, `prediction_drift`, sorted by both keys.
    """
    rows = drift.filter(pl.col("baseline") == "training")
    return (
        rows.group_by("day", "model_version")
        .agg(
            pl.col("drifted")
            .filter(pl.col("column") != SCORE)
            .cast(pl.Float64)
            .mean()
            .alias("drifted_share"),
            pl.col("score").filter(pl.col("column") == SCORE).first().alias("prediction_drift"),
        )
        .sort("day", pl.col("model_version").cast(pl.Int64, strict=False))
    )


def volumes_by_day(summary: pl.DataFrame) -> pl.DataFrame:
    """Per day: transactions scored, flagged, confirmed fraud caught and missed (all versions).

    Returns:
        `day`, `scored`, `flagged`, `fraud_caught`, `fraud_missed`, sorted by day.
    """
    return (
        summary.group_by("day")
        .agg(pl.col("scored", "flagged", "fraud_caught", "fraud_missed").sum())
        .sort("day")
    )


def alerts_by_day(alerts: pl.DataFrame) -> pl.DataFrame:
    """Alerts per day and kind: the monitored window's day, else the day it was raised.

    Returns:
        `day`, `kind`, `alerts`, sorted by day and kind.
    """
    return (
        alerts.with_columns(pl.coalesce(pl.col("window_day"), pl.col("at").dt.date()).alias("day"))
        .group_by("day", "kind")
        .agg(pl.len().alias("alerts"))
        .sort("day", "kind")
    )


def champion_steps(audit: pl.DataFrame) -> pl.DataFrame:
    """The champion in force after each promotion and rollback, oldest first.

    Returns:
        `at`, `champion` (the version), `action`, `who`, `why`.
    """
    moves = audit.filter(
        pl.col("action").is_in(["promoted", "rolled_back"]), pl.col("champion_after").is_not_null()
    )
    return moves.sort("at").select(
        "at", pl.col("champion_after").alias("champion"), "action", "who", "why"
    )


def _empty_figure(title: str, why: str) -> go.Figure:
    figure = go.Figure()
    figure.update_layout(
        title=title,
        annotations=[
            {"text": why, "showarrow": False, "x": 0.5, "y": 0.5, "xref": "paper", "yref": "paper"}
        ],
        xaxis={"visible": False},
        yaxis={"visible": False},
        height=260,
    )
    return figure


def _by_version(frame: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    versions = sorted(
        frame.get_column("model_version").unique().to_list(),
        key=lambda v: (len(str(v)), str(v)),
    )
    return [(str(v), frame.filter(pl.col("model_version") == v)) for v in versions]


def _drift_lines(
    data: DashboardData, title: str, column: str, threshold: float, note: str, yaxis: dict
) -> go.Figure:
    """One line per version of a daily drift column, with its threshold."""
    if not _has(data.drift):
        return _empty_figure(title, "no drift measured yet (monitoring/drift_metrics)")
    figure = go.Figure()
    for version, rows in _by_version(drift_by_day(data.drift)):
        figure.add_trace(
            go.Scatter(
                x=rows["day"].to_list(),
                y=rows[column].to_list(),
                mode="lines+markers",
                name=f"version {version}",
            )
        )
    figure.add_hline(y=threshold, line_dash="dash", annotation_text=note)
    figure.update_layout(title=title, yaxis=yaxis)
    return figure


def drift_share_figure(data: DashboardData) -> go.Figure:
    """The share of drifted features per day and version, with the drift threshold."""
    share = data.thresholds.drift_share
    return _drift_lines(
        data,
        DRIFT_SHARE,
        "drifted_share",
        share,
        f"drifted day at {share:.0%}",
        {"tickformat": ".0%", "range": [0, 1.05]},
    )


def prediction_drift_figure(data: DashboardData) -> go.Figure:
    """The drift score of the prediction per day and version, with its alert threshold."""
    limit = data.thresholds.prediction_drift
    return _drift_lines(
        data,
        PREDICTION_DRIFT,
        "prediction_drift",
        limit,
        f"alert at {limit}",
        {"title": "drift score of the score"},
    )


def pr_auc_figure(data: DashboardData) -> go.Figure:
    """PR-AUC per day and version (hollow until mature) and the share of labelled predictions."""
    if not _has(data.performance):
        return _empty_figure(PR_AUC, "no performance measured yet (monitoring/performance)")
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    for version, rows in _by_version(data.performance.sort("day")):
        mature = rows.get_column("mature").fill_null(False).to_list()
        figure.add_trace(
            go.Scatter(
                x=rows["day"].to_list(),
                y=rows["pr_auc"].to_list(),
                mode="lines+markers",
                name=f"PR-AUC version {version}",
                marker={
                    "symbol": ["circle" if m else "circle-open" for m in mature],
                    "size": 9,
                },
                text=["labels mature" if m else "labels still arriving" for m in mature],
            ),
            secondary_y=False,
        )
        figure.add_trace(
            go.Bar(
                x=rows["day"].to_list(),
                y=rows["label_share"].to_list(),
                name=f"labelled share version {version}",
                opacity=0.3,
            ),
            secondary_y=True,
        )
    figure.add_hline(
        y=data.thresholds.min_pr_auc,
        line_dash="dash",
        annotation_text=f"alert below {data.thresholds.min_pr_auc}",
    )
    figure.update_layout(title=PR_AUC)
    figure.update_yaxes(title_text="PR-AUC", range=[0, 1.05], secondary_y=False)
    figure.update_yaxes(
        title_text="labelled share", tickformat=".0%", range=[0, 1.05], secondary_y=True
    )
    return figure


def volumes_figure(data: DashboardData) -> go.Figure:
    """Transactions scored (bars) and flagged, fraud caught and missed (lines) per day."""
    if not _has(data.summary):
        return _empty_figure(VOLUMES, "no predictions summarized yet (gold/prediction_summary)")
    daily = volumes_by_day(data.summary)
    days = daily["day"].to_list()
    figure = make_subplots(specs=[[{"secondary_y": True}]])
    figure.add_trace(go.Bar(x=days, y=daily["scored"].to_list(), name="scored", opacity=0.5))
    for name in ("flagged", "fraud_caught", "fraud_missed"):
        figure.add_trace(
            go.Scatter(
                x=days,
                y=daily[name].to_list(),
                mode="lines+markers",
                name=name.replace("_", " "),
            ),
            secondary_y=True,
        )
    figure.update_layout(title=VOLUMES)
    figure.update_yaxes(title_text="scored", secondary_y=False)
    figure.update_yaxes(title_text="flagged and confirmed fraud", secondary_y=True)
    return figure


def alerts_figure(data: DashboardData) -> go.Figure:
    """Alerts per day, stacked by kind."""
    if not _has(data.alerts):
        return _empty_figure(ALERTS, "no alert raised (monitoring/alerts)")
    daily = alerts_by_day(data.alerts)
    figure = go.Figure()
    for kind in sorted(daily.get_column("kind").unique().to_list()):
        rows = daily.filter(pl.col("kind") == kind)
        figure.add_trace(go.Bar(x=rows["day"].to_list(), y=rows["alerts"].to_list(), name=kind))
    figure.update_layout(title=ALERTS, barmode="stack", yaxis={"title": "alerts"})
    return figure


def champion_figure(data: DashboardData) -> go.Figure:
    """The champion version over time (a step per promotion or rollback) and its events."""
    steps = champion_steps(data.audit) if _has(data.audit) else None
    if steps is None or not steps.height:
        return _empty_figure(CHAMPION, "no champion promoted yet (ml/model_audit)")
    figure = make_subplots(
        rows=2,
        cols=1,
        row_heights=[0.45, 0.55],
        vertical_spacing=0.08,
        specs=[[{"type": "xy"}], [{"type": "table"}]],
    )
    figure.add_trace(
        go.Scatter(
            x=steps["at"].to_list(),
            y=steps["champion"].to_list(),
            mode="lines+markers",
            line={"shape": "hv"},
            name="champion version",
            text=steps["action"].to_list(),
        ),
        row=1,
        col=1,
    )
    events = data.audit.sort("at", descending=True).head(30)
    figure.add_trace(
        go.Table(
            header={"values": ["at (UTC)", "version", "action", "champion after", "who", "why"]},
            cells={
                "values": [
                    [at.strftime("%Y-%m-%d %H:%M:%S") for at in events["at"].to_list()],
                    events["version"].to_list(),
                    events["action"].to_list(),
                    events["champion_after"].fill_null("").to_list(),
                    events["who"].to_list(),
                    [str(why)[:120] for why in events["why"].to_list()],
                ]
            },
        ),
        row=2,
        col=1,
    )
    figure.update_layout(title=CHAMPION, height=640, showlegend=False)
    figure.update_yaxes(title_text="champion version", type="category", row=1, col=1)
    return figure


FIGURES = (
    drift_share_figure,
    prediction_drift_figure,
    pr_auc_figure,
    volumes_figure,
    alerts_figure,
    champion_figure,
)


def _days(data: DashboardData) -> tuple[datetime.date, datetime.date] | None:
    days = [
        day
        for frame in (data.drift, data.performance, data.summary)
        if _has(frame)
        for day in frame.get_column("day").to_list()
    ]
    return (min(days), max(days)) if days else None


def dashboard_html(data: DashboardData, generated_at: datetime.datetime | None = None) -> str:
    """The page: plotly.js inlined once, then one figure per title of `TITLES`."""
    generated_at = generated_at or datetime.datetime.now(datetime.UTC)
    span = _days(data)
    # Day axes tick on whole days (about ten ticks at most), never on the hours between.
    every = max(1, math.ceil(((span[1] - span[0]).days + 1) / 10)) if span else 1
    divs = []
    for number, build in enumerate(FIGURES):
        figure = build(data)
        figure.update_layout(template="plotly_white", margin={"t": 60, "l": 60, "r": 40})
        if build is not champion_figure:
            figure.update_xaxes(tickformat="%b %d", dtick=every * 86_400_000)
        divs.append(
            '<section class="plot">'
            + pio.to_html(
                figure,
                full_html=False,
                include_plotlyjs=False,
                include_mathjax=False,
                config=CONFIG,
                div_id=f"plot-{number}",
            )
            + "</section>"
        )
    days = _days(data)
    covered = f"days {days[0]} to {days[1]}" if days else "no monitored day yet"
    sources = ", ".join(
        f"{name} v{version}" if version is not None else f"{name} (not yet written)"
        for name, version in data.sources.items()
    )
    title = f"Monitoring dashboard: {data.env}"
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{html.escape(title)}</title>\n"
        "<style>body{font-family:sans-serif;margin:1.5em;color:#222}"
        "section.plot{margin-bottom:2em}p.meta{color:#555}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n'
        "</head>\n<body>\n"
        f"<h1>{html.escape(title)}</h1>\n"
        f'<p class="meta">{html.escape(data.model or "")} &middot; {html.escape(covered)} '
        f"&middot; generated {generated_at:%Y-%m-%d %H:%M:%S} UTC</p>\n"
        f'<p class="meta">tables read: {html.escape(sources)}</p>\n'
        + "\n".join(divs)
        + "\n</body>\n</html>\n"
    )


def write_dashboard(path: Path | str, data: DashboardData) -> Dashboard:
    """Write the page to `path` (its folder created), replacing it whole.

    Written to a temporary name then renamed, so a browser never opens half a page.

    Returns:
        Where it is, what it shows and its size.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    page = dashboard_html(data)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(page, encoding="utf-8")
    partial.replace(path)
    empty = tuple(
        title
        for title, frame in (
            (DRIFT_SHARE, data.drift),
            (PREDICTION_DRIFT, data.drift),
            (PR_AUC, data.performance),
            (VOLUMES, data.summary),
            (ALERTS, data.alerts),
            (CHAMPION, data.audit),
        )
        if not _has(frame)
    )
    return Dashboard(
        path=path, titles=TITLES, empty=empty, size=path.stat().st_size, days=_days(data)
    )
