"""The Dagster UI and the monitoring dashboard in a real browser (Debian's Chromium).

A small lake (two simulated landing days through the medallion, with `mlops backfill`) is
served by `mlops ui` on a free 127.0.0.1 port. Playwright drives the system Chromium: the
global asset lineage shows every layer (bronze, silver, gold, features, ml, serving,
monitoring) and their assets, the monitoring dashboard is materialized from the page and its
run succeeds (seen on the run's page and through GraphQL), then the page it wrote opens from
disk with every network request refused and its plots render without a console error.

Screenshots are kept under `MLOPS_TEST_ARTIFACTS` (default `test-artifacts/` in the repository).
Run as a module (`python -m mlops_assets_tests.e2e.test_browser_ui DATA_ROOT OUT_DIR`), it
takes the README's pictures of an existing environment (e.g. one `mlops demo` built).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from mlops_assets.stack.process import free_port, stop_group

ROOT = Path(__file__).resolve().parents[2]
MLOPS = [sys.executable, "-m", "mlops_assets.cli"]
CHROMIUM = "/usr/bin/chromium"
VIEWPORT = {"width": 1280, "height": 800}
# The UI (webserver, daemon and code server) comes up in about 45 s on a quiet machine.
UI_START_SECONDS = 300
RUN_SECONDS = 300
DAYS = ("2026-01-01", "2026-01-02")

# Per asset group, assets the lineage must list (the last part of their key).
EXPECTED = {
    "bronze": ["transactions", "labels"],
    "silver": ["transactions", "labels"],
    "gold": ["merchant_category_daily", "prediction_summary"],
    "features": ["card_behaviour", "merchant_daily", "merchant_risk"],
    "ml": ["training_set", "fraud_model", "model_validation", "champion", "model_audit"],
    "serving": ["batch_predictions", "stream_predictions", "inference_log"],
    "monitoring": ["drift_metrics", "performance", "alerts", "dashboard"],
}
DASHBOARD_PLOTS = (
    "Drifted feature share per day",
    "Prediction drift per day",
    "PR-AUC as labels mature",
    "Volumes: scored, flagged, fraud caught and missed",
    "Alerts per day",
    "Champion history",
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def artifacts() -> Path:
    """The folder screenshots are kept in (`MLOPS_TEST_ARTIFACTS`, default test-artifacts/)."""
    folder = Path(os.environ.get("MLOPS_TEST_ARTIFACTS") or ROOT / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def env_for(data_root: Path) -> dict[str, str]:
    """The process environment of an `mlops` command on `data_root` (dev), nothing inherited."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLOPS_", "DAGSTER_"))}
    return {**env, "MLOPS_DATA_ROOT": str(data_root), "MLOPS_ENV": "dev"}


def mlops(env: dict[str, str], *args: str) -> str:
    """Run the `mlops` command as a user would; its output, or a failure showing why."""
    done = subprocess.run(
        [*MLOPS, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=900
    )
    assert done.returncode == 0, f"mlops {' '.join(args)}:\n{done.stdout}{done.stderr[-3000:]}"
    return done.stdout


def graphql(port: int, query: str, variables: dict | None = None) -> dict:
    """The `data` of a GraphQL answer of the webserver (errors fail the test)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/graphql",
        data=json.dumps({"query": query, "variables": variables or {}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        answer = json.loads(response.read())
    assert not answer.get("errors"), answer["errors"]
    return answer["data"]


@contextmanager
def dagster_ui(data_root: Path, log: Path) -> Iterator[int]:
    """`mlops ui` on a free port, its whole process group stopped at the end; the port."""
    port = free_port()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*MLOPS, "ui", "--port", str(port)],
            env=env_for(data_root),
            cwd=ROOT,
            stdout=output,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + UI_START_SECONDS
        while True:
            assert process.poll() is None, f"mlops ui exited early:\n{tail(log)}"
            try:
                if graphql(port, "{ assetNodes { id } }")["assetNodes"]:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, f"the UI served no assets in time:\n{tail(log)}"
            time.sleep(2)
        yield port
    finally:
        # dagster dev does not exit promptly on SIGTERM: stop its whole process group.
        stop_group(process.pid, timeout=20)
        process.wait(timeout=10)


def tail(log: Path, lines: int = 40) -> str:
    """The last lines of a log file."""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def lake(tmp_path_factory) -> Path:
    """Two simulated landing days through bronze, silver and gold; the data root."""
    root = tmp_path_factory.mktemp("browser")
    env = env_for(root)
    mlops(env, "simulate", "--days", str(len(DAYS)), "--per-day", "800")
    mlops(env, "backfill", "medallion_daily", "--from", DAYS[0], "--to", DAYS[-1])
    return root


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright (Playwright's own browsers are never downloaded)."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: install Debian's chromium package")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield chromium
        finally:
            chromium.close()


def dismiss_welcome(page) -> None:
    """Close the UI's first-visit community dialog (its "Skip" button) when it shows."""
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(state="visible", timeout=15_000)
    except Exception:  # noqa: BLE001 - the dialog shows only on an instance's first visit
        return
    skip.click()
    skip.wait_for(state="hidden")


def open_lineage(page, port: int) -> None:
    """The global asset lineage, its first-visit dialog dismissed."""
    from playwright.sync_api import expect

    page.goto(f"http://127.0.0.1:{port}/asset-groups")
    expect(page.get_by_text("Global asset lineage", exact=True)).to_be_visible(timeout=60_000)
    dismiss_welcome(page)


def graph_node(page, text: str):
    """The lineage graph's node (an asset or a collapsed group) showing `text`."""
    return page.locator("foreignObject").filter(
        has=page.get_by_text(re.compile(rf"^{re.escape(text)}$"))
    )


def sidebar_item(page, text: str):
    """The sidebar's row (a group's folder or an asset) showing `text`."""
    return page.locator("button").filter(has=page.get_by_text(text, exact=True)).first


def expand_sidebar_group(page, group: str) -> None:
    """Unfold a group's folder in the sidebar (its caret, left of the row)."""
    box = sidebar_item(page, group).bounding_box()
    assert box is not None, f"the sidebar shows no group {group}"
    page.mouse.click(box["x"] - 10, box["y"] + box["height"] / 2)


def test_lineage_materialize_and_dashboard_in_chromium(lake, browser):

    shots = artifacts()
    with dagster_ui(lake, shots / "dagster-ui.log") as port:
        page = browser.new_page(viewport=VIEWPORT)
        with screenshot_on_failure(page, shots / "lineage-failure.png"):
            dashboard = lineage_and_materialization(page, port, lake, shots)
        page.close()
    check_dashboard(browser, dashboard, shots / "dashboard.png")


@contextmanager
def screenshot_on_failure(page, path: Path) -> Iterator[None]:
    """Keep a screenshot of the page when the block fails."""
    try:
        yield
    except BaseException:
        page.screenshot(path=path)
        raise


def lineage_and_materialization(page, port: int, lake: Path, shots: Path) -> Path:
    """The lineage checks and the dashboard materialized from the page; the page's path."""
    from playwright.sync_api import expect

    open_lineage(page, port)

    # Collapsed, the graph has one node per group: every layer of the platform.
    for group in EXPECTED:
        expect(graph_node(page, group).first, f"group {group} in the graph").to_be_visible()
    page.screenshot(path=shots / "lineage-groups.png")

    # Unfolded in the sidebar, each group lists its assets.
    for group, names in EXPECTED.items():
        expand_sidebar_group(page, group)
        for name in names:
            item = sidebar_item(page, name)
            expect(item, f"{group}/{name} in the lineage sidebar").to_be_visible()
        expand_sidebar_group(page, group)  # folded again, the next group stays in view
    expand_sidebar_group(page, "monitoring")

    # The dashboard asset, selected: the graph zooms to it and the panel describes it.
    sidebar_item(page, "dashboard").click()
    expect(page.get_by_text("monitoring / dashboard", exact=True)).to_be_visible()
    for name in ("dashboard", "drift_metrics", "performance"):
        expect(graph_node(page, name).first, f"{name} node in the graph").to_be_visible()
    page.screenshot(path=shots / "lineage-dashboard-selected.png")

    # Materialized from the page. The small lake has no monitoring tables yet, so the UI
    # asks to confirm (upstream assets never materialized); the page is then written with
    # each plot saying it has no data yet.
    page.get_by_role("button", name="Materialize selected").click()
    confirm = page.get_by_role("dialog").filter(has_text="Are you sure?")
    expect(confirm, "the upstream-missing confirmation").to_be_visible(timeout=60_000)
    expect(confirm).to_contain_text("monitoring / drift_metrics")
    confirm.get_by_role("button", name="Confirm").click()
    launched = page.locator('a[href^="/runs/"]').first
    expect(launched, "a link to the launched run").to_be_visible(timeout=60_000)
    href = launched.get_attribute("href") or ""
    run_id = href.rsplit("/", 1)[1]
    page.screenshot(path=shots / "materialize-launched.png")
    page.goto(f"http://127.0.0.1:{port}/runs/{run_id}")
    ended = page.get_by_text(re.compile(r"^(Success|Failure|Canceled)$")).first
    expect(ended, "the run's end on its page").to_be_visible(timeout=RUN_SECONDS * 1000)
    page.screenshot(path=shots / "materialize-run.png")
    assert ended.inner_text() == "Success", f"the run ended {ended.inner_text()}"

    # The instance agrees: the run succeeded and materialized the dashboard page.
    run = graphql(
        port,
        "query R($id: ID!) { runOrError(runId: $id) { ... on Run { status assetSelection "
        "{ path } } } }",
        {"id": run_id},
    )["runOrError"]
    assert run["status"] == "SUCCESS"
    assert run["assetSelection"] == [{"path": ["monitoring", "dashboard"]}]
    materialization = graphql(
        port,
        '{ assetOrError(assetKey: {path: ["monitoring", "dashboard"]}) { ... on Asset { '
        "assetMaterializations(limit: 1) { runId metadataEntries { label "
        "... on PathMetadataEntry { path } } } } } }",
    )["assetOrError"]["assetMaterializations"][0]
    assert materialization["runId"] == run_id
    paths = {e["label"]: e.get("path") for e in materialization["metadataEntries"]}
    dashboard = lake / "dev" / "monitoring" / "dashboard.html"
    assert paths["path"] == str(dashboard)
    assert dashboard.exists()
    return dashboard


def check_dashboard(browser, dashboard: Path, screenshot: Path) -> None:
    """Open the dashboard page from disk, the network refused; its plots render, no errors."""
    from playwright.sync_api import expect

    context = browser.new_context(viewport=VIEWPORT)
    requested: list[str] = []
    errors: list[str] = []

    def refuse(route) -> None:
        requested.append(route.request.url)
        route.abort()

    context.route(re.compile(r"^(https?|wss?)://"), refuse)
    page = context.new_page()
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(dashboard.as_uri())
    plots = page.locator(".js-plotly-plot")
    expect(plots).to_have_count(len(DASHBOARD_PLOTS))
    for index in range(len(DASHBOARD_PLOTS)):
        plot = plots.nth(index)
        plot.scroll_into_view_if_needed()
        expect(plot.locator("svg.main-svg").first).to_be_visible()
    for title in DASHBOARD_PLOTS:
        expect(page.get_by_text(title).first, f"plot {title!r}").to_be_attached()
    page.screenshot(path=screenshot, full_page=True)
    assert requested == [], f"the dashboard asked the network for {requested}"
    assert errors == [], f"console errors: {errors}"
    context.close()


def capture(data_root: Path, out: Path) -> None:
    """The README's pictures of an existing environment: lineage graph and dashboard.

    Args:
        data_root: An `MLOPS_DATA_ROOT` whose dev environment `mlops demo` built.
        out: Folder of `lineage.png` and `dashboard.png` (1280 x 800).
    """
    from playwright.sync_api import sync_playwright

    out.mkdir(parents=True, exist_ok=True)
    dashboard = data_root / "dev" / "monitoring" / "dashboard.html"
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        with dagster_ui(data_root, out / "dagster-ui.log") as port:
            page = chromium.new_page(viewport=VIEWPORT)
            open_lineage(page, port)
            page.get_by_role("button", name="Hide navigation").click()
            # The asset tree folded away (the button right of "Jump to…"): the graph alone.
            jump = page.get_by_placeholder("Jump to…").bounding_box()
            assert jump is not None, "the lineage page has no asset tree"
            page.mouse.click(jump["x"] + jump["width"] + 22, jump["y"] + jump["height"] / 2)
            page.keyboard.press("Alt+e")  # every group unfolded: assets by name
            page.wait_for_timeout(2_000)
            page.screenshot(path=out / "lineage.png")
        (out / "dagster-ui.log").unlink()
        page = chromium.new_page(viewport=VIEWPORT)
        page.route(re.compile(r"^(https?|wss?)://"), lambda route: route.abort())
        page.goto(dashboard.as_uri())
        page.locator(".js-plotly-plot svg.main-svg").first.wait_for()
        page.screenshot(path=out / "dashboard.png")
        chromium.close()


if __name__ == "__main__":
    capture(Path(sys.argv[1]), Path(sys.argv[2]))
