"""The staging stage of a release: the daily loop on staging against prod's champion."""

from __future__ import annotations

import argparse


def add_commands(stages: argparse._SubParsersAction) -> None:
    """Add `mlops release staging` to the `mlops release` parser."""
