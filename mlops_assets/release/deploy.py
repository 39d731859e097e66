"""Deployment of code to prod: the record of what runs there, and what it makes stale."""

from __future__ import annotations

import argparse


def add_commands(stages: argparse._SubParsersAction) -> None:
    """Add `mlops release deploy` and `mlops release status` to the `mlops release` parser."""
