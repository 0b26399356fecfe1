"""The agent's view of its devices: collectors with their own metrics, the backend override."""
from __future__ import annotations

import logging

import pytest

from examroom.agent.config import DeviceConfig
from examroom.agent.devices import Devices
from examroom.agent.metrics import Metrics
from examroom.drivers.base import FAULT, OK
from examroom.drivers.bus import Bus
from examroom.drivers.clock import SimClock


def _metric(m: Metrics, line_start: str) -> float:
    return next(float(line.rsplit(" ", 1)[1]) for line in m.render().decode().splitlines()
                if line.startswith(line_start))


def test_a_status_that_raises_is_a_fault_and_a_failed_collector(monkeypatch) -> None:
    m = Metrics()
    devices = Devices((DeviceConfig("clock", "clock", "sim", {}),), Bus(), m)
    devices.start()
    try:
        assert devices.statuses()["clock"]["state"] == OK
        assert _metric(m, 'examroom_device_status_success{device="clock"}') == 1.0

        def broken(self):
            raise RuntimeError("driver bug")

        monkeypatch.setattr(SimClock, "status", broken)
        st = devices.statuses()["clock"]
        assert st["state"] == FAULT and "driver bug" in st["reason"]
        assert _metric(m, 'examroom_device_status_success{device="clock"}') == 0.0
        assert _metric(m, 'examroom_device_up{device="clock",kind="clock"}') == 0.0
        assert devices.needing_attention() == ["clock: fault (status failed: driver bug)"]
    finally:
        devices.stop()


def test_backend_override_runs_real_config_on_sim_loudly(monkeypatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setenv("EXAMROOM_BACKEND", "sim")
    configs = (DeviceConfig("clock", "clock", "system", {"poll_interval_s": 10, "max_offset_s": 0.5,
                                                          "step_threshold_s": 1.0, "chronyc": "chronyc"}),)
    devices = Devices(configs, Bus(), Metrics())
    with caplog.at_level(logging.WARNING):
        devices.start()
    try:
        assert devices.statuses()["clock"]["backend"] == "sim"
        assert any("EXAMROOM_BACKEND=sim" in r.message and "clock" in r.message for r in caplog.records)
    finally:
        devices.stop()
