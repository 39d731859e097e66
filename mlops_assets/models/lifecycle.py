"""The model lifecycle as MLflow registry aliases and tags: None, Staging, Production, rollback.

MLflow's registry stages are deprecated, so the lifecycle is expressed with aliases: a new
version has stage None; alias `challenger` marks Staging; alias `champion` marks Production;
the champion before it keeps alias `previous`, which is what a rollback restores. Every move
is also written to the version's tags (`mlops.stage`, `mlops.stage_history`), so the history
of a version can be read from the registry alone.
"""

from __future__ import annotations

import datetime
import json
from dataclasses import dataclass
from typing import Any

CHALLENGER = "challenger"
CHAMPION = "champion"
PREVIOUS = "previous"
STAGE_TAG = "mlops.stage"
HISTORY_TAG = "mlops.stage_history"
VALIDATION_TAG = "mlops.validation"
STAGES = {None: "None", CHALLENGER: "Staging", CHAMPION: "Production", PREVIOUS: "Archived"}


class LifecycleError(RuntimeError):
    """A lifecycle move the rules refuse (e.g. promoting a version that did not pass)."""


@dataclass(frozen=True)
class Move:
    """One lifecycle move, as recorded in the version's history and returned to callers."""

    model: str
    version: str
    stage: str
    who: str
    why: str
    at: str
    replaced: str | None = None


def model_name(env: str, base: str = "fraud_detector") -> str:
    """Registered model name of an environment, e.g. `dev.fraud_detector`."""
    return f"{env}.{base}"


class Lifecycle:
    """Moves versions of one registered model through the lifecycle.

    Args:
        client: An `mlflow.MlflowClient` bound to the environment's tracking and registry
            store (`models.guard.registry_client` checks every write against the access
            policy).
        name: The registered model (see `model_name`).
        env: The active environment: when given, the client is guarded for it
            (`models.guard.guarded`), so a move of another environment's model, or in
            another environment's store, is refused before it is written.
    """

    def __init__(self, client: Any, name: str, env: str | None = None) -> None:
        if env is not None:
            from mlops_assets.models.guard import guarded

            client = guarded(client, env)
        self.client = client
        self.name = name

    def version_of(self, alias: str) -> str | None:
        """The version holding an alias, or None."""
        try:
            return str(self.client.get_model_version_by_alias(self.name, alias).version)
        except Exception:  # noqa: BLE001 - MLflow raises a generic error for a missing alias
            return None

    def status(self) -> dict[str, Any]:
        """Champion, challenger and previous versions, and every version's stage."""
        versions = self.client.search_model_versions(f"name = '{self.name}'")
        return {
            "model": self.name,
            CHAMPION: self.version_of(CHAMPION),
            CHALLENGER: self.version_of(CHALLENGER),
            PREVIOUS: self.version_of(PREVIOUS),
            "versions": {
                str(v.version): {
                    "stage": v.tags.get(STAGE_TAG, "None"),
                    "validation": v.tags.get(VALIDATION_TAG),
                }
                for v in sorted(versions, key=lambda v: int(v.version))
            },
        }

    def record_validation(self, version: str, passed: bool, details: dict[str, Any]) -> None:
        """Store a validation result on the version (what promotion checks)."""
        self.client.set_model_version_tag(
            self.name,
            version,
            VALIDATION_TAG,
            json.dumps({"passed": passed, **details}, default=str, sort_keys=True),
        )

    def validation(self, version: str) -> dict[str, Any] | None:
        """The version's recorded validation result, or None."""
        tag = self.client.get_model_version(self.name, version).tags.get(VALIDATION_TAG)
        return json.loads(tag) if tag else None

    def make_challenger(self, version: str, who: str, why: str) -> Move:
        """Put a version in Staging (alias `challenger`)."""
        self.client.get_model_version(self.name, version)  # fails clearly if absent
        return self._move(version, CHALLENGER, who, why)

    def promote(self, version: str, who: str, why: str) -> Move:
        """Make a validated version the champion; the old champion becomes `previous`.

        Raises:
            LifecycleError: The version has no passing validation result.
        """
        result = self.validation(version)
        if not result or not result.get("passed"):
            raise LifecycleError(
                f"{self.name} version {version} has not passed validation "
                f"({'no result' if not result else 'failed'}); it cannot become champion"
            )
        champion = self.version_of(CHAMPION)
        if champion == version:
            raise LifecycleError(f"{self.name} version {version} is already the champion")
        if champion is not None:
            self._move(champion, PREVIOUS, who, f"replaced by version {version}")
        if self.version_of(CHALLENGER) == version:
            self.client.delete_registered_model_alias(self.name, CHALLENGER)
        return self._move(version, CHAMPION, who, why, replaced=champion)

    def rollback(self, who: str, why: str) -> Move:
        """Restore the previous champion; the current one leaves Production.

        Raises:
            LifecycleError: There is no previous champion to restore.
        """
        previous = self.version_of(PREVIOUS)
        if previous is None:
            raise LifecycleError(f"{self.name} has no previous champion to roll back to")
        current = self.version_of(CHAMPION)
        self.client.delete_registered_model_alias(self.name, PREVIOUS)
        if current is not None:
            self.client.delete_registered_model_alias(self.name, CHAMPION)
            self._tag(current, "Archived", who, f"rolled back: {why}")
        return self._move(previous, CHAMPION, who, f"rollback: {why}", replaced=current)

    def _move(
        self, version: str, alias: str, who: str, why: str, replaced: str | None = None
    ) -> Move:
        self.client.set_registered_model_alias(self.name, alias, version)
        return self._tag(version, STAGES[alias], who, why, replaced)

    def _tag(
        self, version: str, stage: str, who: str, why: str, replaced: str | None = None
    ) -> Move:
        move = Move(
            model=self.name,
            version=str(version),
            stage=stage,
            who=who,
            why=why,
            at=datetime.datetime.now(datetime.UTC).isoformat(),
            replaced=replaced,
        )
        tags = self.client.get_model_version(self.name, version).tags
        history = json.loads(tags.get(HISTORY_TAG, "[]"))
        history.append({"stage": stage, "who": who, "why": why, "at": move.at})
        self.client.set_model_version_tag(self.name, version, STAGE_TAG, stage)
        # MLflow tag values are limited in length: keep the latest moves.
        self.client.set_model_version_tag(
            self.name, version, HISTORY_TAG, json.dumps(history[-20:], sort_keys=True)
        )
        return move
