from __future__ import annotations

from pathlib import Path

import pytest

from tests.agentproc import AgentProcess, write_config
from devkit.localbroker import Broker
from tests.mqttwatch import Watcher

# Fixtures shared by several test modules live in their helper modules, next to the helpers
# they use; registered here, a test module just names them as arguments, never imports them.
pytest_plugins = [
    "tests.camera_images",    # images: test_camera.py, test_camera_health.py
    "tests.checkin_station",  # plan, schedule, emitted, clock, make: test_checkin.py, test_session_record.py
    "tests.pcsc_harness",     # cards, make_reader: test_pcsc.py, test_pcsc_recovery.py
    "tests.browser",          # chromium: test_site_board.py
]


@pytest.fixture
def broker(tmp_path: Path):
    b = Broker(tmp_path / "broker").start()
    yield b
    b.kill()


@pytest.fixture
def watcher(broker: Broker):
    with Watcher(broker.port) as w:
        yield w


@pytest.fixture
def make_agent(tmp_path: Path, broker: Broker):
    started: list[AgentProcess] = []

    def make(room: str = "room101", extra: str = "", **kw) -> AgentProcess:
        cfg = write_config(tmp_path, broker.port, room=room, extra=extra, **kw)
        a = AgentProcess(cfg, tmp_path / f"{room}.sock")
        started.append(a)
        return a

    yield make
    for a in started:
        a.kill()
