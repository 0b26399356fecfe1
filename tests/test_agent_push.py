"""The push instruction test (推送指令测试) end to end: the room's side and ``examroom-site push``.

Real Mosquitto, real agents as processes. The site pushes (``push`` over MQTT only),
the room shows it and records a ``push`` event; a person at the box answers
(``push_ack`` on the control socket only, ``examroom-agent ack``), recorded as a
``push_ack`` event that the site's ``push`` command reports. Every event is checked
against the schemas docs/mqtt.md publishes.
"""
from __future__ import annotations

import json
import os
import pwd
import queue
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, Iterator

import pytest

from devkit.localbroker import Broker
from examroom.site.commands import CommandClient
from examroom.site.config import parse
from examroom.site.store import Store
from tests.agentproc import AgentProcess, wait_online, write_config
from tests.mqttwatch import Watcher
from tests.schemas import validator

ROOT = Path(__file__).resolve().parent.parent
ROSTER = """
[[proctor]]
id = "P01"
name = "张老师"
unit = "第一中学"

[[proctor]]
id = "P02"
name = "李老师"
unit = "第一中学"
"""
ME = pwd.getpwuid(os.getuid()).pw_name


class Site:
    """A broker, room101 (with a proctor roster) and room102 (without), and the site's config."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.broker = Broker(tmp / "broker").start()
        self.rooms: dict[str, AgentProcess] = {}
        for room, extra in (("room101", ROSTER), ("room102", "")):
            cfg = write_config(tmp, self.broker.port, room=room, extra=extra, heartbeat_s=1)
            self.rooms[room] = AgentProcess(cfg, tmp / f"{room}.sock")
        threads = [threading.Thread(target=a.start) for a in self.rooms.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_online(self.broker.port, list(self.rooms))
        self.config = tmp / "site.toml"
        self.config.write_text(f'[site]\nid = "site01"\nname = "测试考点"\n[mqtt]\nhost = "127.0.0.1"\n'
                               f'port = {self.broker.port}\n[store]\npath = "{tmp}/site.db"\n[board]\nlisten = ""\n'
                               f'[rooms]\nexpected = ["room101", "room102"]\n', encoding="utf-8")
        self.cfg = parse(self.config.read_text(encoding="utf-8"), str(self.config))

    def close(self) -> None:
        for a in self.rooms.values():
            a.kill()
        self.broker.kill()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("push"))
    try:
        yield s
    finally:
        s.close()


@pytest.fixture
def watcher(site: Site) -> Iterator[Watcher]:
    with Watcher(site.broker.port, "exam/site01/#") as w:
        yield w


@pytest.fixture
def client(site: Site) -> Iterator[CommandClient]:
    with CommandClient(site.cfg) as c:
        yield c


def events(w: Watcher, room: str, kind: str, push_id: str) -> list[dict[str, Any]]:
    return [m.json for m in w.on(f"{room}/event/{kind}") if m.json["data"].get("push_id") == push_id]


def valid(kind: str, event: dict[str, Any]) -> None:
    assert list(validator("event").iter_errors(event)) == []
    assert list(validator(f"data/{kind}").iter_errors(event["data"])) == [], event


# -- the room ---------------------------------------------------------------------------------------

def test_a_push_is_shown_once_and_acknowledged_by_a_roster_proctor(site: Site, client: CommandClient,
                                                                 watcher: Watcher) -> None:
    room = site.rooms["room101"]
    a = client.request("room101", "push", {"push_id": "t1", "text": "请检查考场时钟"})
    assert a.ok and a.reply["push_id"] == "t1" and a.reply["shown"] is True, a.reply
    again = client.request("room101", "push", {"push_id": "t1", "text": "请检查考场时钟"})
    assert again.ok and again.reply.get("repeat") is True
    [pending] = [p for p in room.call("status")["pushes"] if p["push_id"] == "t1"]
    assert pending["text"] == "请检查考场时钟" and pending["age_s"] >= 0
    assert "PUSHED" in room.logs() and "t1" in room.logs()  # the WARNING line a technician sees

    refused = room.call("push_ack", push_id="t1", by="P09")
    assert not refused["ok"] and "roster" in refused["error"]
    ack = room.call("push_ack", push_id="t1", by="p01")  # the roster's spelling is recorded
    assert ack["ok"] and ack["by"] == "P01" and ack["after_s"] >= 0, ack
    assert not room.call("push_ack", push_id="t1", by="P01")["ok"]  # answered once
    assert all(p["push_id"] != "t1" for p in room.call("status")["pushes"])

    watcher.wait_for(lambda _: events(watcher, "room101", "push_ack", "t1"))
    [shown] = events(watcher, "room101", "push", "t1")  # the repeat made no second event
    valid("push", shown)
    assert shown["data"] == {"push_id": "t1", "text": "请检查考场时钟", "by": "site (exam/site01/room101/cmd/push)"}
    [acked] = events(watcher, "room101", "push_ack", "t1")
    valid("push_ack", acked)
    assert acked["data"]["by"] == "P01" and acked["data"]["user"] == ME


def test_push_comes_only_from_the_site_and_push_ack_only_from_the_box(site: Site, client: CommandClient) -> None:
    room = site.rooms["room102"]
    local = room.call("push", push_id="x1", text="faked locally")
    assert not local["ok"] and "only from the site" in local["error"]
    remote = client.request("room102", "push_ack", {"by": "site"})
    assert remote.answered and not remote.ok and "not accepted over MQTT" in remote.error
    assert room.call("status")["pushes"] == []
    nothing = room.call("push_ack", by="someone")
    assert not nothing["ok"] and "no pushed instruction is waiting" in nothing["error"]


@pytest.mark.parametrize("args,words", [
    ({"text": "x"}, "'push_id' is required"),
    ({"push_id": "a b", "text": "x"}, "push_id"),
    ({"push_id": "x" * 65, "text": "x"}, "push_id"),
    ({"push_id": "ok1", "text": ""}, "'text' must be a non-empty string"),
    ({"push_id": "ok1", "text": "x" * 501}, "longer than 500"),
    ({"push_id": "ok1", "text": ["a list"]}, "'text' must be a non-empty string"),
    ({"push_id": True, "text": "x"}, "push_id"),
])
def test_bad_push_arguments_get_an_error_reply(site: Site, client: CommandClient, args: dict, words: str) -> None:
    a = client.request("room102", "push", args)
    assert a.answered and not a.ok and words in a.error, a.reply
    assert client.request("room102", "ping").ok  # and the room is fine


def test_cli_ack_pushes_and_status(site: Site, client: CommandClient) -> None:
    room = site.rooms["room102"]  # no roster: any short text answers, scrubbed like a note
    for pid in ("c1", "c2"):
        assert client.request("room102", "push", {"push_id": pid, "text": f"instruction {pid}"}).ok

    def agent_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "examroom.agent.cli", *args, "--config", str(room.config)],
                              capture_output=True, text=True, timeout=30, cwd=ROOT)

    listed = agent_cli("pushes")
    assert listed.returncode == 0 and "c1" in listed.stdout and "instruction c2" in listed.stdout
    assert json.loads(agent_cli("pushes", "--json").stdout)["pushes"][0]["push_id"] == "c1"
    assert "c1" in agent_cli("status").stdout
    first = agent_cli("ack", "--by", "值班技术员")  # no id: the oldest waiting
    assert first.returncode == 0 and "push c1 acknowledged by 值班技术员" in first.stdout, first
    assert agent_cli("ack", "c2", "--by", "tech").returncode == 0
    none = agent_cli("ack", "--by", "tech")
    assert none.returncode == 1 and "no pushed instruction is waiting" in none.stderr
    assert "no pushed instruction" in agent_cli("pushes").stdout


# -- examroom-site push ------------------------------------------------------------------------------

class PushRun:
    """``examroom-site push`` as a subprocess whose lines are read as they come."""

    def __init__(self, site: Site, *args: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "examroom.site.cli", "-c", str(site.config), "push",
                                      *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def until(self, words: str, timeout: float = 20) -> str:
        while True:
            line = self.lines.get(timeout=timeout)
            self.seen.append(line)
            if words in line:
                return line

    def finish(self) -> tuple[int, str]:
        code = self.proc.wait(30)
        self._reader.join(10)
        while not self.lines.empty():
            self.seen.append(self.lines.get_nowait())
        return code, "".join(self.seen)


def test_push_cli_reports_delivery_and_acknowledgement(site: Site, watcher: Watcher) -> None:
    run = PushRun(site, "考前指令测试：请回复", "--rooms", "room101,room102", "--wait", "30", "--by", "考务办")
    push_id = run.until("push ").split()[1]
    run.until("room101: delivered")
    run.until("room102: delivered")
    run.until("waiting up to")
    cli = subprocess.run([sys.executable, "-m", "examroom.agent.cli", "ack", push_id, "--by", "P02",
                          "--config", str(site.rooms["room101"].config)], capture_output=True, text=True, timeout=30)
    assert cli.returncode == 0, cli.stderr
    assert site.rooms["room102"].call("push_ack", push_id=push_id, by="技术员")["ok"]
    run.until("room101: acknowledged by P02")
    run.until("room102: acknowledged by 技术员")
    code, out = run.finish()
    assert code == 0, out + run.proc.stderr.read()
    assert "acknowledged by 2 of 2 rooms" in out
    watcher.wait_for(lambda _: events(watcher, "room102", "push_ack", push_id))
    for room in ("room101", "room102"):
        [shown] = events(watcher, room, "push", push_id)
        valid("push", shown)
        [acked] = events(watcher, room, "push_ack", push_id)
        valid("push_ack", acked)
    store = Store(site.cfg.store["path"])
    store.open()
    try:
        [logged] = [e for e in store.log_entries("push") if e["push_id"] == push_id]
    finally:
        store.close()
    assert logged["text"] == "考前指令测试：请回复" and logged["rooms"] == ["room101", "room102"]
    assert logged["by"] == "考务办" and logged["sent_at"].endswith("+08:00")  # the site's zone, Asia/Shanghai


def test_push_cli_to_every_room_unacknowledged_exits_1(site: Site, watcher: Watcher) -> None:
    run = PushRun(site, "nobody answers this one", "--wait", "1")  # every room: a broadcast
    push_id = run.until("push ").split()[1]
    code, out = run.finish()
    assert code == 1, out
    assert "room101: delivered" in out and "room102: delivered" in out
    assert "NOT acknowledged: room101, room102" in out
    assert any(m.topic == "exam/site01/broadcast/cmd/push" for m in watcher.messages)
    for room in ("room101", "room102"):  # still waiting in each room
        assert push_id in [p["push_id"] for p in site.rooms[room].call("status")["pushes"]]


def test_push_cli_wait_0_is_delivery_only(site: Site) -> None:
    run = PushRun(site, "delivery only", "--rooms", "room102,room404", "--wait", "0", "--timeout", "1")
    code, out = run.finish()
    assert code == 1, out  # room404 does not exist: not delivered
    assert "room102: delivered" in out and "room404: NOT delivered: no answer within" in out
