"""The release workflows name real commands in the right order; deployment bookkeeping."""

import re
import shlex
import subprocess

import pytest
import yaml

from mlops_assets.cli import build_parser
from mlops_assets.definitions import build_definitions
from mlops_assets.release.deploy import (
    AssetChange,
    DeployError,
    changed_assets,
    code_versions,
    deploy,
    git_state,
)
from mlops_assets.settings import load_settings, project_root

WORKFLOWS = project_root() / ".github" / "workflows"


def workflow(name: str) -> dict:
    return yaml.safe_load((WORKFLOWS / name).read_text())


def triggers(document: dict) -> dict:
    # YAML 1.1 reads the key `on` as True.
    return document.get("on", document.get(True))


def makefile_targets() -> set[str]:
    text = (project_root() / "Makefile").read_text()
    return {
        match.group(1)
        for match in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, flags=re.MULTILINE)
    }


def commands(run: str) -> list[list[str]]:
    """The simple commands of a `run:` script, GitHub expressions replaced by a word."""
    text = re.sub(r"\$\{\{[^}]*\}\}", "EXPR", run)
    found = []
    for line in text.splitlines():
        for part in re.split(r"&&|\|\||;", line):
            words = shlex.split(part)
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                words = words[1:]
            if words:
                found.append(words)
    return found


def check_command(words: list[str], targets: set[str]) -> None:
    program = words[0].rsplit("/", 1)[-1]
    if program == "make":
        named = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        assert named, f"`{' '.join(words)}` names no Makefile target"
        for target in named:
            assert target in targets, f"`{' '.join(words)}`: no Makefile target {target!r}"
    elif program == "mlops":
        try:
            build_parser().parse_args(words[1:])
        except SystemExit:
            pytest.fail(f"`{' '.join(words)}` is not an mlops command")
    else:
        pytest.fail(f"`{' '.join(words)}` names neither a Makefile target nor an mlops command")


def all_runs(document: dict) -> list[tuple[str, str]]:
    return [
        (job, step["run"])
        for job, spec in document["jobs"].items()
        for step in spec["steps"]
        if "run" in step
    ]


@pytest.mark.parametrize("name", ["ci.yml", "release.yml"])
def test_every_run_names_a_makefile_target_or_an_mlops_command(name):
    targets = makefile_targets()
    runs = all_runs(workflow(name))
    assert runs
    for _, run in runs:
        for words in commands(run):
            check_command(words, targets)


def test_ci_runs_lint_validate_and_unit_tests_on_every_push_and_pull_request():
    document = workflow("ci.yml")
    on = triggers(document)
    assert "push" in on and "pull_request" in on
    assert not (on["push"] or {}).get("branches") and not (on["push"] or {}).get("tags")
    made = [words[1] for _, run in all_runs(document) for words in commands(run)]
    assert made == ["install", "lint", "validate", "test-unit"]


def test_a_release_tag_runs_unit_then_staging_then_deploy_on_prods_runner():
    document = workflow("release.yml")
    assert triggers(document) == {"push": {"tags": ["v*"]}}
    jobs = document["jobs"]
    assert set(jobs) == {"unit", "staging", "deploy"}
    assert "needs" not in jobs["unit"]
    assert jobs["staging"]["needs"] == "unit"
    assert jobs["deploy"]["needs"] == "staging"
    runs = {
        job: [w for _, r in all_runs({"jobs": {job: jobs[job]}}) for w in commands(r)]
        for job in jobs
    }
    assert ["make", "test-unit"] in runs["unit"]
    assert ["make", "release-check"] in runs["staging"]
    deploy_job = jobs["deploy"]
    assert deploy_job["environment"] == "prod"
    assert set(deploy_job["runs-on"]) == {"self-hosted", "prod"}
    checkout = deploy_job["steps"][0]
    assert checkout["uses"].startswith("actions/checkout@")
    assert checkout["with"]["ref"] == "${{ github.ref }}"
    assert runs["deploy"][0] == ["make", "install"]
    [deploy_run] = [r for _, r in all_runs({"jobs": {"deploy": deploy_job}}) if "deploy" in r]
    assert deploy_run.startswith("MLOPS_ENV=prod ")
    assert runs["deploy"][-1][:3] == [".venv/bin/mlops", "release", "deploy"]
    # One release at a time, never cancelled half-way.
    assert document["concurrency"]["cancel-in-progress"] is False


def test_make_deploy_runs_the_prod_deployment():
    text = (project_root() / "Makefile").read_text()
    recipe = text.split("\ndeploy:", 1)[1].split("\n\n", 1)[0]
    assert "MLOPS_ENV=prod $(BIN)/mlops release deploy" in recipe


def test_every_materializable_asset_carries_a_code_version(tmp_path):
    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": "prod"})
    defs = build_definitions(settings)
    versions = code_versions(defs)
    graph = defs.resolve_asset_graph()
    materializable = {k.to_user_string() for k in graph.materializable_asset_keys}
    assert materializable <= set(versions)
    assert all(versions.values())


def test_an_asset_without_a_code_version_is_named():
    import dagster as dg

    @dg.asset(key=["gold", "unversioned"])
    def unversioned() -> None: ...

    @dg.asset(key=["gold", "versioned"], code_version="v1")
    def versioned() -> None: ...

    with pytest.raises(DeployError, match=r"without a code version: gold/unversioned;"):
        code_versions(dg.Definitions(assets=[unversioned, versioned]))


def test_changed_assets_names_new_gone_and_moved_code_versions():
    before = {"a/x": "1", "a/y": "1", "a/z": "1"}
    after = {"a/x": "1", "a/y": "2", "a/w": "1"}
    assert changed_assets(before, after) == [
        AssetChange("a/w", None, "1"),
        AssetChange("a/y", "1", "2"),
        AssetChange("a/z", "1", None),
    ]
    assert changed_assets(None, {"a/x": "1"}) == [AssetChange("a/x", None, "1")]


def git(root, *args):
    subprocess.run(["git", *args], cwd=root, check=True, capture_output=True)


def test_git_state_reads_commit_tag_and_uncommitted_files(tmp_path):
    with pytest.raises(DeployError, match="not a git work tree"):
        git_state(tmp_path)
    git(tmp_path, "init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git(tmp_path, "add", "a.txt")
    git(tmp_path, "-c", "user.name=t", "-c", "user.email=t@example.org", "commit", "-qm", "one")
    git(tmp_path, "tag", "v1.0.0")
    state = git_state(tmp_path)
    assert len(state.commit) == 40 and state.tag == "v1.0.0" and state.clean
    (tmp_path / "a.txt").write_text("two\n")
    (tmp_path / "b.txt").write_text("new\n")
    state = git_state(tmp_path)
    assert not state.clean and set(state.uncommitted) == {" M a.txt", "?? b.txt"}


@pytest.mark.parametrize("env", ["dev", "staging"])
def test_deploy_refuses_every_environment_but_prod_before_reading_anything(tmp_path, env):
    settings = load_settings({"MLOPS_DATA_ROOT": str(tmp_path), "MLOPS_ENV": env})
    with pytest.raises(DeployError, match=f"deploys to prod only, and MLOPS_ENV is '{env}'"):
        deploy(settings, None, None, who="someone", root=tmp_path)
    assert not any(tmp_path.iterdir())
