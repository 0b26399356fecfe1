"""The site's command client against real rooms: replies matched, broadcasts collected, rooms paced.

Real Mosquitto, real agents as processes (two rooms with a simulated audio feed, so
``trial_listening`` takes real seconds and keeps a room's command slots busy).
"""
from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from devkit.localbroker import Broker, free_port
from examroom.site import cli as site_cli
from examroom.site.commands import MAX_OUTSTANDING, BrokerUnreachable, CommandClient
from examroom.site.config import SiteConfig, parse
from tests.agentproc import AgentProcess, wait_online, write_config
from tests.mqttwatch import Watcher

AUDIO = '\n[[device]]\nkind = "audio"\nname = "broadcast"\nbackend = "sim"\n'


def site_config(tmp: Path, port: int) -> SiteConfig:
    path = tmp / "site.toml"
    path.write_text(f'[site]\nid = "site01"\n[mqtt]\nhost = "127.0.0.1"\nport = {port}\n'
                    f'[store]\npath = "{tmp}/site.db"\n[board]\nlisten = ""\n', encoding="utf-8")
    return parse(path.read_text(encoding="utf-8"), str(path))


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Broker, SiteConfig]]:
    tmp = tmp_path_factory.mktemp("sitecmd")
    broker = Broker(tmp / "broker").start()
    agents = [AgentProcess(write_config(tmp, broker.port, room=r, extra=AUDIO, heartbeat_s=1), tmp / f"{r}.sock")
              for r in ("room101", "room102")]
    try:
        with ThreadPoolExecutor(len(agents)) as pool:
            list(pool.map(lambda a: a.start(), agents))
        wait_online(broker.port, ["room101", "room102"])
        yield broker, site_config(tmp, broker.port)
    finally:
        for a in agents:
            a.kill()
        broker.kill()


@pytest.fixture
def client(stack: tuple[Broker, SiteConfig]) -> Iterator[CommandClient]:
    with CommandClient(stack[1]) as c:
        yield c


def test_a_request_is_answered_on_the_rooms_reply_tree_with_its_round_trip(stack, client: CommandClient) -> None:
    with Watcher(stack[0].port, "exam/site01/room101/#") as w:
        a = client.request("room101", "ping", timeout=5)
        assert a.ok and a.reply["pong"] is True and a.error is None
        assert 0 < a.rtt_ms < 5000 and a.sent_at <= time.time()
        w.wait_for(lambda ms: [m for m in ms if m.topic == "exam/site01/room101/reply/ping"
                               and m.json["request_id"] == a.reply["request_id"]])
        [cmd] = [m.json for m in w.messages if m.topic == "exam/site01/room101/cmd/ping"]
        assert cmd == {"id": a.reply["request_id"], "args": {}}


def test_a_silent_room_is_no_answer_after_the_timeout(client: CommandClient) -> None:
    t0 = time.monotonic()
    a = client.request("room999", "ping", timeout=0.5)
    assert not a.answered and not a.ok and a.rtt_ms is None
    assert a.error == "no answer within 0.5 s" and 0.5 <= time.monotonic() - t0 < 2


def test_a_broadcast_collects_one_reply_per_room(stack, client: CommandClient) -> None:
    with Watcher(stack[0].port, "exam/site01/+/cmd/#") as w:
        got = client.broadcast("ping", rooms=["room101", "room102", "room999"], timeout=1.5)
        assert [m.topic for m in w.messages] == ["exam/site01/broadcast/cmd/ping"]  # one message for all
    assert got["room101"].ok and got["room102"].ok and not got["room999"].answered
    assert got["room101"].reply["request_id"] == got["room102"].reply["request_id"]
    everyone = client.broadcast("ping", timeout=1)  # no room named: whoever answers in the time
    assert {"room101", "room102"} <= set(everyone)


def test_never_more_than_four_of_ours_outstanding_per_room(client: CommandClient) -> None:
    """Twelve one-second trial listenings at once: the room would refuse the 5th as busy;
    paced, all run, four at a time."""
    t0 = time.monotonic()
    with ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda _: client.request("room102", "trial_listening", {"seconds": 1}, 20),
                                range(12)))
    assert [a.error for a in answers] == [None] * 12
    assert time.monotonic() - t0 >= 12 / MAX_OUTSTANDING * 1.0 * 0.9  # three rounds of four


def test_busy_from_someone_elses_commands_is_sent_again(stack, client: CommandClient) -> None:
    """Another client fills room101's four slots; our ping is refused busy, then sent again."""
    other = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    other.connect("127.0.0.1", stack[0].port)
    other.loop_start()
    try:
        with Watcher(stack[0].port, "exam/site01/room101/event/command") as w:
            for i in range(MAX_OUTSTANDING):
                other.publish("exam/site01/room101/cmd/trial_listening",
                              json.dumps({"id": f"other-{i}", "args": {"seconds": 1.5}}), qos=1).wait_for_publish(5)
            a = client.request("room101", "ping", timeout=10)
            assert a.ok, a.reply
            busy = w.wait_for(lambda ms: [m for m in ms if m.json["data"]["command"] == "ping"
                                          and str(m.json["data"]["error"]).startswith("busy:")])
            assert busy, "the first ping was refused busy"
    finally:
        other.disconnect()
        other.loop_stop()


def test_replies_to_others_are_not_taken_for_ours(stack, client: CommandClient) -> None:
    """Everyone on the site sees every reply: only our id (correlation data) matches."""
    done = threading.Event()
    with CommandClient(stack[1]) as second:
        def theirs() -> None:
            for _ in range(5):
                assert second.request("room101", "ping", timeout=5).ok
            done.set()

        t = threading.Thread(target=theirs)
        t.start()
        mine = [client.request("room101", "status", timeout=5) for _ in range(3)]
        t.join()
    assert done.is_set() and all(a.ok and "agent" in a.reply for a in mine)


def test_an_unreachable_broker_is_said_at_once(tmp_path: Path) -> None:
    cfg = site_config(tmp_path, free_port())  # nobody listens there
    t0 = time.monotonic()
    with pytest.raises(BrokerUnreachable):
        CommandClient(cfg).connect(timeout=1)
    assert time.monotonic() - t0 < 3
    argv = ["-c", cfg.file]
    assert site_cli.main([*argv, "ping", "--rooms", "room101"]) == 3
    assert site_cli.main([*argv, "jointtest", "--rooms", "room101", "--out", str(tmp_path / "r")]) == 3
    assert site_cli.main([*argv, "push", "x", "--rooms", "room101", "--wait", "0"]) == 3
