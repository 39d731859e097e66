"""A deployment reloads a running Dagster webserver, which then shows the new code's staleness.

A real `dagster-webserver` on a free 127.0.0.1 port serves a small code location from a
temporary folder; its code is rewritten on disk the way a checkout of a new tag rewrites it.
"""

import runpy
import textwrap

import dagster as dg
import pytest

from mlops_assets.release.deploy import reload_webserver, stale_by_code
from mlops_assets.stack.dagster_servers import _bin, graphql, workspace_loaded
from mlops_assets.stack.process import ServerProcess, free_port

CODE = """
import dagster as dg


@dg.asset(key=["gold", "probe"], code_version="{probe}")
def probe() -> None:
    pass


@dg.asset(key=["gold", "probe_child"], deps=[probe], code_version="child-1")
def probe_child() -> None:
    pass


defs = dg.Definitions(assets=[probe, probe_child])
"""

ASSET_NODES = """
{ assetNodes { assetKey { path } opVersion staleStatus staleCauses { category reason } } }
"""


def write_code(folder, probe_version: str) -> dict:
    path = folder / "location.py"
    path.write_text(textwrap.dedent(CODE.format(probe=probe_version)))
    return runpy.run_path(str(path))


@pytest.fixture
def webserver(tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    home = tmp_path / "home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    write_code(code, "probe-1")
    (code / "workspace.yaml").write_text(
        "load_from:\n"
        "  - python_file:\n"
        "      relative_path: location.py\n"
        f"      working_directory: {code}\n"
        "      location_name: release_probe\n"
    )
    port = free_port()
    server = ServerProcess(
        name="dagster-webserver",
        command=[
            _bin("dagster-webserver"),
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            str(code / "workspace.yaml"),
        ],
        state_dir=tmp_path / "state",
        env={"DAGSTER_HOME": str(home)},
        cwd=code,
        port=port,
        ready=lambda: workspace_loaded(port),
    )
    server.start(timeout=180)
    try:
        yield port, code, home
    finally:
        server.stop()


def nodes(port: int) -> dict[str, dict]:
    data = graphql(port, ASSET_NODES)
    return {"/".join(n["assetKey"]["path"]): n for n in data["assetNodes"]}


def test_reload_loads_the_new_code_and_dagster_shows_exactly_the_changed_asset_stale(webserver):
    port, code, home = webserver
    with dg.DagsterInstance.from_config(str(home)) as instance:
        first = write_code(code, "probe-1")["defs"]
        assert dg.materialize(first.assets, instance=instance).success
        shown = nodes(port)
        assert shown["gold/probe"]["opVersion"] == "probe-1"
        assert shown["gold/probe"]["staleStatus"] == "FRESH"

        # The new tag's code on disk: the webserver still shows the old until reloaded.
        second = write_code(code, "probe-2")["defs"]
        assert nodes(port)["gold/probe"]["opVersion"] == "probe-1"
        reload = reload_webserver(port)
        assert reload.answered and reload.reloaded == ("release_probe",) and not reload.failed
        shown = nodes(port)
        assert shown["gold/probe"]["opVersion"] == "probe-2"
        assert shown["gold/probe"]["staleStatus"] == "STALE"
        assert [c["category"] for c in shown["gold/probe"]["staleCauses"]] == ["CODE"]
        assert shown["gold/probe_child"]["staleStatus"] == "FRESH"
        # The deployment's report agrees with what the webserver shows.
        [stale] = stale_by_code(second, instance)
        assert (stale.asset, stale.recorded, stale.current) == (
            "gold/probe",
            ("probe-1",),
            "probe-2",
        )

        # Code that does not load: the reload reports the location's error.
        (code / "location.py").write_text(
            "import dagster as dg\nraise ValueError('broken release')\n"
        )
        broken = reload_webserver(port)
        assert broken.answered and not broken.reloaded
        assert "broken release" in broken.failed["release_probe"]
        assert "failed release_probe" in broken.describe()


def test_no_webserver_answering_is_reported_not_raised():
    port = free_port()
    reload = reload_webserver(port)
    assert not reload.answered and not reload.reloaded
    assert (
        reload.describe()
        == f"no Dagster webserver on 127.0.0.1:{port} answered; its code loads when it starts"
    )
