"""CLI subcommands for exam work in the room (check-in fallbacks, audio, camera).

Kept apart from cli.py so each file stays about one audience: these are what a
proctor's helper or technician types during entry and listening.
"""
from __future__ import annotations

import argparse
from typing import Any, Callable


def add_commands(sub: Any, with_config: Callable, call: Callable, reply: Callable) -> None:
    """Filled in as the exam features land."""
