"""The configs a newcomer copies must pass the checker they will run on them."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("name", ["example.toml", "demo.toml"])
def test_shipped_configs_pass_check_config(name: str) -> None:
    r = subprocess.run([sys.executable, "-m", "examroom.agent.cli", "check-config", str(ROOT / "config" / name)],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "OK" in r.stdout and "seat plan:" in r.stdout
