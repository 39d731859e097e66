"""A champion's cold start without MLflow's import: the registry read directly, a cached scorer.

Importing MLflow and loading a version through its pyfunc takes seconds; a serving process
needs neither when the version was compiled before. `RegistryReader` reads the alias and a
version's artifact location straight from the registry: the SQLite file with `sqlite3`
(read-only), an MLflow server through its REST API (`urllib`), anything else through the
MLflow client. `CompiledCache` keeps, per registered version, the `CompiledPipeline` that
was checked bit for bit against the pyfunc, with the probe rows and the pyfunc's scores of
that check, keyed by the digest of the version's artifact files and of the serving code.

Loading from the cache verifies it: the artifact files must have the recorded digest (a
re-logged or altered model misses), the serving code too, and the cached scorer must give
the recorded pyfunc score to the last bit on every probe row. Anything else (no cache, a
miss, artifacts not on a local disk) is the full path through MLflow, which then writes the
cache for the next start.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import pickle
import sqlite3
import tempfile
import threading
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Bumped when the cache's layout changes (old entries then miss).
CACHE_FORMAT = 1
# The sources whose code decides a cached scorer's answers and the plain-Python features.
_CODE_FILES = ("serving/compiled.py", "serving/model.py", "features/spec.py")
_PACKAGE = Path(__file__).resolve().parent.parent


class RegistryError(RuntimeError):
    """The registry could not be read (unreachable, or an answer that makes no sense)."""


@dataclass(frozen=True)
class VersionInfo:
    """Where a registered version's artifacts are.

    Attributes:
        name: Registered model name.
        version: The version.
        location: Its artifacts' URI as the registry gives it.
        local_dir: That location as a local directory, None when it is not on this disk.
    """

    name: str
    version: str
    location: str | None
    local_dir: Path | None


def _local_dir(location: str | None) -> Path | None:
    if not location:
        return None
    parsed = urllib.parse.urlparse(location)
    if parsed.scheme == "file":
        path = Path(urllib.parse.unquote(parsed.path))
    elif parsed.scheme == "" and location.startswith("/"):
        path = Path(location)
    else:
        return None
    return path if path.is_dir() else None


class RegistryReader:
    """Reads aliases and artifact locations from an MLflow registry without importing MLflow.

    Args:
        uri: The registry URI (`Settings.mlflow_uri`): `sqlite:///<path>`, `http(s)://...`,
            or any other store MLflow takes (read through `mlflow.MlflowClient` then).
        timeout: Seconds an HTTP registry has to answer.
        mirror_dir: Where artifacts an MLflow server proxies (`mlflow-artifacts:/`) are
            copied to, so that they can be verified and read locally; without it such
            versions have no local directory.
    """

    def __init__(
        self, uri: str, *, timeout: float = 5.0, mirror_dir: str | Path | None = None
    ) -> None:
        self.uri = uri
        self.timeout = timeout
        self.mirror_dir = None if mirror_dir is None else Path(mirror_dir)
        parsed = urllib.parse.urlparse(uri)
        self.kind = (
            "sqlite"
            if parsed.scheme == "sqlite"
            else "rest"
            if parsed.scheme in ("http", "https")
            else "mlflow"
        )
        self._path = uri[len("sqlite:///") :] if self.kind == "sqlite" else None
        if self._path is not None and not self._path.startswith("/"):
            self._path = str(Path(self._path).resolve())
        self._workspaces: bool | None = None
        self._client: Any = None
        self._lock = threading.Lock()

    # -- SQLite --------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _sqlite(self) -> Any:
        if not Path(self._path or "").exists():
            raise RegistryError(f"the registry file {self._path} does not exist")
        connection = sqlite3.connect(f"file:{self._path}?mode=ro", uri=True, timeout=5.0)
        try:
            if self._workspaces is None:
                columns = {r[1] for r in connection.execute("PRAGMA table_info(model_versions)")}
                self._workspaces = "workspace" in columns
            yield connection
        except sqlite3.Error as error:
            raise RegistryError(f"reading the registry {self._path}: {error}") from error
        finally:
            connection.close()

    def _where(self) -> str:
        return " AND workspace = 'default'" if self._workspaces else ""

    # -- REST ----------------------------------------------------------------------------------

    def _get(
        self, route: str, query: dict[str, str], *, raw: bool = False
    ) -> dict[str, Any] | bytes | None:
        """GET an MLflow REST route (JSON, or bytes when `raw`); None when it does not exist."""
        url = f"{self.uri.rstrip('/')}/api/2.0/{route}"
        if query:
            url += f"?{urllib.parse.urlencode(query)}"
        request = urllib.request.Request(url, headers=_auth_headers())
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                body = response.read()
                return body if raw else json.loads(body)
        except urllib.error.HTTPError as error:
            body = error.read()[:2000]
            with contextlib.suppress(ValueError):
                code = json.loads(body).get("error_code")
                if code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                    return None
            raise RegistryError(f"{url} answered {error.code}: {body!r}") from error
        except (OSError, ValueError) as error:
            raise RegistryError(f"{url}: {error}") from error

    # -- MLflow client -------------------------------------------------------------------------

    def _mlflow(self) -> Any:
        with self._lock:
            if self._client is None:
                import mlflow

                self._client = mlflow.MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)
            return self._client

    # -- the questions -------------------------------------------------------------------------

    def alias_version(self, name: str, alias: str) -> str | None:
        """The version holding `alias` of `name`, None when the alias or the model is absent.

        Raises:
            RegistryError: The registry could not be read.
        """
        if self.kind == "sqlite":
            with self._sqlite() as connection:
                row = connection.execute(
                    "SELECT version FROM registered_model_aliases WHERE name = ? AND alias = ?"
                    + self._where(),
                    (name, alias),
                ).fetchone()
            return None if row is None else str(row[0])
        if self.kind == "rest":
            answer = self._get("mlflow/registered-models/alias", {"name": name, "alias": alias})
            if answer is None:
                return None
            return str(answer["model_version"]["version"])
        from mlflow.exceptions import MlflowException

        try:
            return str(self._mlflow().get_model_version_by_alias(name, alias).version)
        except MlflowException as error:
            if error.error_code in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
                return None
            raise

    def version_info(self, name: str, version: str) -> VersionInfo:
        """Where `version` of `name` keeps its artifacts.

        Raises:
            RegistryError: The registry could not be read or holds no such version.
        """
        if self.kind == "sqlite":
            with self._sqlite() as connection:
                row = connection.execute(
                    "SELECT storage_location, source FROM model_versions "
                    "WHERE name = ? AND version = ?" + self._where(),
                    (name, int(version)),
                ).fetchone()
            if row is None:
                raise RegistryError(f"the registry holds no version {version} of {name}")
            location = row[0] or row[1]
        elif self.kind == "rest":
            answer = self._get(
                "mlflow/model-versions/get-download-uri", {"name": name, "version": str(version)}
            )
            if not isinstance(answer, dict):
                raise RegistryError(f"the registry holds no version {version} of {name}")
            location = answer.get("artifact_uri")
            if location and location.startswith("mlflow-artifacts:") and self.mirror_dir:
                return VersionInfo(name, str(version), location, self._mirror(location))
        else:
            location = self._mlflow().get_model_version_download_uri(name, version)
        return VersionInfo(name, str(version), location, _local_dir(location))

    def _mirror(self, location: str) -> Path:
        """Copy the files of proxied artifacts (`mlflow-artifacts:/<path>`) to the mirror.

        The copy is made afresh in a new folder and renamed into place, so that a reader
        never sees a half-copied version.
        """
        path = urllib.parse.urlparse(location).path.lstrip("/")
        assert self.mirror_dir is not None
        target = self.mirror_dir / hashlib.sha256(location.encode()).hexdigest()[:24]
        self.mirror_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.mirror_dir, prefix="copy-"))
        try:
            pending = [""]
            while pending:
                folder = pending.pop()
                listed = self._get(
                    "mlflow-artifacts/artifacts", {"path": f"{path}/{folder}".rstrip("/")}
                )
                if not isinstance(listed, dict):
                    raise RegistryError(f"the artifacts at {location} cannot be listed")
                for item in listed.get("files", []):
                    relative = f"{folder}/{item['path']}".lstrip("/")
                    if ".." in Path(relative).parts:
                        raise RegistryError(f"artifact path {relative!r} leaves its folder")
                    if item.get("is_dir"):
                        pending.append(relative)
                        continue
                    quoted = urllib.parse.quote(f"{path}/{relative}")
                    data = self._get(f"mlflow-artifacts/artifacts/{quoted}", {}, raw=True)
                    if not isinstance(data, bytes):
                        raise RegistryError(f"artifact {relative} of {location} is missing")
                    (staging / relative).parent.mkdir(parents=True, exist_ok=True)
                    (staging / relative).write_bytes(data)
            old = None
            if target.exists():
                old = target.with_name(target.name + f".old-{os.getpid()}")
                os.replace(target, old)
            os.replace(staging, target)
            if old is not None:
                import shutil

                shutil.rmtree(old, ignore_errors=True)
        except BaseException:
            import shutil

            shutil.rmtree(staging, ignore_errors=True)
            raise
        return target


def _auth_headers() -> dict[str, str]:
    """The MLflow client's credentials from the environment, for a guarded server."""
    token = os.environ.get("MLFLOW_TRACKING_TOKEN")
    if token:
        return {"Authorization": f"Bearer {token}"}
    user, password = (
        os.environ.get("MLFLOW_TRACKING_USERNAME"),
        os.environ.get("MLFLOW_TRACKING_PASSWORD"),
    )
    if user and password:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    return {}


def _portable(compiled: Any) -> Any:
    """A copy of the compiled scorer without what unpickling would import scikit-learn for."""
    import copy

    portable = copy.copy(compiled)
    if getattr(portable, "_tree_predictors", None) is not None:
        portable._tree_predictors = None  # scikit-learn predictors, rebuilt when asked for
    return portable


def artifact_digest(directory: Path) -> str:
    """SHA-256 over every file of a version's artifacts: relative paths and contents."""
    digest = hashlib.sha256()
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(directory)).encode() + b"\0")
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        digest.update(b"\0")
    return digest.hexdigest()


def code_digest() -> str:
    """SHA-256 of the serving code a cached scorer depends on, and of the cache's format."""
    digest = hashlib.sha256(f"format {CACHE_FORMAT}\0".encode())
    for name in _CODE_FILES:
        digest.update((_PACKAGE / name).read_bytes())
    return digest.hexdigest()


@dataclass(frozen=True)
class CachedScorer:
    """What the cache gives back: everything `ServingModel` needs without the pyfunc.

    Attributes:
        compiled: The compiled pipeline (verified against the recorded pyfunc scores).
        spec: The feature spec, as `FeatureSpec.to_dict` wrote it.
        threshold: The decision threshold.
        python_features: Whether plain-Python features matched polars when it was written.
        fallback_reason: Why a part of the reference path serves, as when it was written.
        verified_rows: Probe rows the cached scorer was verified on at this load.
        probe_rows: Those rows (in `feature_columns` order).
        probe_scores: The pyfunc's scores of them.
    """

    compiled: Any
    spec: dict[str, Any]
    threshold: float
    python_features: bool
    fallback_reason: str | None
    verified_rows: int
    probe_rows: list[list[Any]]
    probe_scores: list[float]


class CompiledCache:
    """Verified compiled scorers on disk, one per registered version and artifact digest.

    Args:
        directory: Where entries live (`<env root>/serving_cache` in `build_service`).
    """

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def _entry(self, name: str, version: str) -> Path:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
        return self.directory / safe / f"v{version}.pkl"

    def save(
        self,
        name: str,
        version: str,
        artifacts: Path,
        *,
        compiled: Any,
        spec: dict[str, Any],
        threshold: float,
        python_features: bool,
        fallback_reason: str | None,
        probe_rows: list[list[Any]],
        probe_scores: list[float],
    ) -> Path:
        """Write a version's checked scorer with its probe rows and their pyfunc scores.

        The file is written whole (a temporary file renamed), so a reader never sees half.
        """
        entry = {
            "format": CACHE_FORMAT,
            "name": name,
            "version": str(version),
            "artifact_digest": artifact_digest(artifacts),
            "code_digest": code_digest(),
            "spec": spec,
            "threshold": threshold,
            "python_features": python_features,
            "fallback_reason": fallback_reason,
            "probe_rows": probe_rows,
            "probe_scores": probe_scores,
            "compiled": _portable(compiled),
        }
        path = self._entry(name, version)
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        try:
            with os.fdopen(handle, "wb") as output:
                pickle.dump(entry, output, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(temporary, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
            raise
        return path

    def load(self, name: str, version: str, artifacts: Path) -> tuple[CachedScorer | None, str]:
        """The verified scorer of a version, or None and why the cache cannot serve it."""
        path = self._entry(name, version)
        if not path.exists():
            return None, f"no cached scorer at {path}"
        try:
            with open(path, "rb") as handle:
                entry = pickle.load(handle)  # noqa: S301 - written by this code, verified below
        except Exception as error:  # noqa: BLE001 - a broken entry is a miss, rewritten later
            return None, f"cached scorer {path} unreadable: {type(error).__name__}: {error}"
        if not isinstance(entry, dict) or entry.get("format") != CACHE_FORMAT:
            return None, f"cached scorer {path} has another format"
        if entry.get("name") != name or entry.get("version") != str(version):
            return None, f"cached scorer {path} is of another version"
        if entry["code_digest"] != code_digest():
            return None, "the serving code changed since the scorer was cached"
        if entry["artifact_digest"] != artifact_digest(artifacts):
            return None, f"the artifacts of {name} version {version} changed since cached"
        compiled = entry["compiled"]
        rows, scores = entry["probe_rows"], entry["probe_scores"]
        if not rows or len(rows) != len(scores):
            return None, f"cached scorer {path} holds no probe rows"
        for row, want in zip(rows, scores, strict=True):
            got = compiled.score(row)
            if got != want:
                return None, f"cached scorer gives {got!r}, the pyfunc gave {want!r} for {row}"
        return (
            CachedScorer(
                compiled=compiled,
                spec=entry["spec"],
                threshold=float(entry["threshold"]),
                python_features=bool(entry["python_features"]),
                fallback_reason=entry["fallback_reason"],
                verified_rows=len(rows),
                probe_rows=rows,
                probe_scores=scores,
            ),
            "verified",
        )
