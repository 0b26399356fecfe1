"""What systemd and Prometheus see of a running agent."""
from __future__ import annotations

import socket
import urllib.request
from pathlib import Path

from devkit.localbroker import Broker, free_port
from tests.agentproc import AgentProcess, write_config
from tests.mqttwatch import Watcher


def _recv_until(sock: socket.socket, wanted: str, timeout: float = 10.0) -> list[str]:
    sock.settimeout(timeout)
    got: list[str] = []
    while wanted not in got:
        got.extend(sock.recv(4096).decode().split("\n"))
    return got


def test_sd_notify_ready_watchdog_stopping(tmp_path: Path, broker: Broker) -> None:
    notify_path = str(tmp_path / "notify.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(notify_path)
        agent = AgentProcess(write_config(tmp_path, broker.port), tmp_path / "room101.sock",
                             env={"NOTIFY_SOCKET": notify_path, "WATCHDOG_USEC": "400000"})
        agent.start()
        assert "READY=1" in _recv_until(sock, "READY=1")
        assert "WATCHDOG=1" in _recv_until(sock, "WATCHDOG=1")  # half of WatchdogSec: every 0.2 s
        assert "WATCHDOG=1" in _recv_until(sock, "WATCHDOG=1")
        assert agent.terminate() == 0
        assert "STOPPING=1" in _recv_until(sock, "STOPPING=1")


def test_metrics_endpoint(tmp_path: Path, broker: Broker, watcher: Watcher) -> None:
    port = free_port()
    agent = AgentProcess(write_config(tmp_path, broker.port, metrics_listen=f"127.0.0.1:{port}"),
                         tmp_path / "room101.sock").start()
    try:
        agent.call("note", text="for the metrics")
        watcher.wait_for(lambda ms: [m for m in ms if "/event/note" in m.topic])
        # the next heartbeat refreshes the spool gauge after the PUBACK
        n = len(watcher.on("heartbeat"))
        watcher.wait_for(lambda ms: len([m for m in ms if m.topic.endswith("/heartbeat")]) > n)
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        agent.kill()
    assert "examroom_broker_connected 1.0" in text
    assert 'examroom_events_spooled_total{kind="note"} 1.0' in text
    assert 'examroom_events_published_total{kind="note"} 1.0' in text
    assert "examroom_publish_latency_seconds_count 1.0" in text
    assert "examroom_spool_events 0.0" in text
    assert "examroom_broker_reconnects_total 0.0" in text
