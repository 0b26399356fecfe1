"""The deployment kit, end to end: generated PKI, generated broker config and ACL, a real
TLS Mosquitto, paho clients holding room/aggregator certificates, and the real agent.

What it proves: the files in deploy/ work together as a sysadmin would use them, and the
broker, not goodwill, keeps room 101 from speaking for room 102.
"""
from __future__ import annotations

import os
import shutil
import ssl
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from examroom.agent.config import load
from tests.agentproc import AgentProcess
from tests.site_kit import ACCEPTED, CONFIGS, NOT_AUTHORIZED, PKI, REPO, SITE, Client, Site, on, run

@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    s = Site(tmp_path_factory.mktemp("site")).make().start()
    yield s
    s.stop()


def test_pki_files_are_private_and_reruns_keep_them(site: Site) -> None:
    for key in (site.pki / "private").iterdir():
        assert key.stat().st_mode & 0o777 == 0o600, key
    before = (site.pki / "certs/site01-room101.crt").read_bytes()
    run("bash", PKI, site.pki, "room", SITE, "room101")
    assert (site.pki / "certs/site01-room101.crt").read_bytes() == before
    subject = run("openssl", "x509", "-in", site.pki / "certs/site01-room101.crt", "-noout", "-subject")
    assert subject.stdout.strip().endswith("CN = site01-room101")
    r = subprocess.run(["bash", str(PKI), str(site.pki), "room", SITE, "broadcast"], capture_output=True, text=True)
    assert r.returncode != 0 and "broadcast" in r.stderr
    r = subprocess.run(["bash", str(PKI), str(site.pki), "room", "site02", "room1"], capture_output=True, text=True)
    assert r.returncode != 0 and 'for site "site01"' in r.stderr


def test_room_publishes_its_own_topics(site: Site) -> None:
    with Client(site, "aggregator") as agg, Client(site, "site01-room101") as room:
        agg.subscribe(f"exam/{SITE}/#")
        assert room.publish("exam/site01/room101/status", b'{"state":"online"}', retain=True) in ACCEPTED
        assert room.publish("exam/site01/room101/event/note", b'{"seq":1}') in ACCEPTED
        assert room.publish("exam/site01/room101/heartbeat") in ACCEPTED
        assert room.publish("exam/site01/room101/reply/ping") in ACCEPTED
        agg.wait_for(on("exam/site01/room101/event/note"))
        assert room.publish("exam/site01/room101/status", b"", retain=True) in ACCEPTED  # clear retained


def test_room_cannot_publish_as_another_room_or_command(site: Site) -> None:
    with Client(site, "site01-room101") as room:
        assert room.publish("exam/site01/room102/status", retain=True) == NOT_AUTHORIZED
        assert room.publish("exam/site01/room102/event/note") == NOT_AUTHORIZED
        assert room.publish("exam/site01/room101/cmd/ping") == NOT_AUTHORIZED  # only the aggregator commands
        assert room.publish("exam/site01/broadcast/cmd/ping") == NOT_AUTHORIZED
        assert room.publish("exam/site02/room101/status") == NOT_AUTHORIZED
        assert room.publish("exam/site01/room101/status") in ACCEPTED  # still connected and allowed


def test_client_without_certificate_is_refused(site: Site) -> None:
    anon = Client(site, None)
    try:
        anon.c.connect("127.0.0.1", site.port, keepalive=10)
        anon.c.loop_start()
        assert anon.gone.wait(5) or anon.connack is None
    except (ssl.SSLError, OSError):
        pass  # refused during the handshake: also a refusal
    finally:
        anon.c.loop_stop()
    assert anon.connack is None or anon.connack.is_failure


def test_aggregator_commands_reach_only_their_room(site: Site) -> None:
    with Client(site, "aggregator") as agg, Client(site, "site01-room101") as r101, \
            Client(site, "site01-room102") as r102:
        r101.subscribe("exam/site01/room101/cmd/+", "exam/site01/broadcast/cmd/+")
        r102.subscribe("exam/site01/room101/cmd/+", "exam/site01/broadcast/cmd/+")  # the first is denied
        assert agg.publish("exam/site01/room101/cmd/selftest", b'{"n":1}') in ACCEPTED
        assert agg.publish("exam/site01/broadcast/cmd/ping", b'{"n":2}') in ACCEPTED
        got = r101.wait_for(on("exam/site01/broadcast/cmd/ping"))
        assert [m.topic for m in got] == ["exam/site01/room101/cmd/selftest", "exam/site01/broadcast/cmd/ping"]
        # the broadcast came after room101's command: had room102 been allowed it, it would be here
        got = r102.wait_for(on("exam/site01/broadcast/cmd/ping"))
        assert [m.topic for m in got] == ["exam/site01/broadcast/cmd/ping"]
        assert agg.publish("exam/site01/room101/status") == NOT_AUTHORIZED  # reads rooms, does not forge them


def test_make_configs_renders_checked_bundles(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "bundles"
    run(sys.executable, CONFIGS, "--pki", site.pki, "--site", SITE, "--broker-host", "127.0.0.1",
        "--broker-port", site.port, "--out", out)
    rooms = [line.split(",")[0] for line in
             (REPO / "deploy/fleet/rooms.example.csv").read_text(encoding="utf-8").splitlines()[1:] if line]
    assert sorted(p.name for p in out.iterdir()) == sorted(rooms)
    for room in rooms:
        cfg = load(out / room / "agent.toml")  # agent.config.parse, paths resolved in the bundle
        assert cfg.room["id"] == room and cfg.site["id"] == SITE
        assert cfg.mqtt["tls_cert"] == str(out / room / "tls/room.crt")
        assert (out / room / "tls/room.key").stat().st_mode & 0o777 == 0o600
        assert (out / room / "seatplan.csv").stat().st_mode & 0o777 == 0o600
        assert cfg.checkin["seatplan"] == str(out / room / "seatplan.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("room,label,seatplan,hostname\nbroadcast,x,"
                   f"{REPO}/deploy/fleet/seatplans/room101.example.csv,h1\n", encoding="utf-8")
    r = subprocess.run([sys.executable, str(CONFIGS), "--csv", str(bad), "--pki", str(site.pki), "--site",
                        SITE, "--broker-host", "127.0.0.1", "--out", str(tmp_path / "b2")],
                       capture_output=True, text=True)
    assert r.returncode == 2 and "broadcast" in r.stderr


def test_real_agent_over_tls(site: Site, tmp_path: Path) -> None:
    out = tmp_path / "bundles"
    run(sys.executable, CONFIGS, "--pki", site.pki, "--site", SITE, "--broker-host", "127.0.0.1",
        "--broker-port", site.port, "--out", out)
    cfg = out / "room101" / "agent.toml"
    text = cfg.read_text(encoding="utf-8")
    for old, new in (("/var/lib/examroom", str(tmp_path / "state")),
                     ("/run/examroom/agent.sock", str(tmp_path / "agent.sock")),
                     ('listen = "127.0.0.1:9108"', 'listen = ""'),
                     ("interval_s = 10", "interval_s = 0.5")):
        assert old in text, old
        text = text.replace(old, new)
    cfg.write_text(text, encoding="utf-8")
    (tmp_path / "state").mkdir()
    agent = AgentProcess(cfg, tmp_path / "agent.sock")
    try:
        with Client(site, "aggregator") as agg:
            agg.subscribe(f"exam/{SITE}/#")
            agent.start()
            online = lambda ms: [m for m in ms if m.topic == "exam/site01/room101/status"  # noqa: E731
                                 and b'"online"' in m.payload]
            agg.wait_for(online)
            seq = agent.call("note", text="installed over TLS", author="deploy-test")["seq"]
            agg.wait_for(lambda ms: [m for m in ms if m.topic == "exam/site01/room101/event/note"
                                     and f'"seq":{seq}'.encode() in m.payload])
            agg.wait_for(on("exam/site01/room101/heartbeat"))
        with Client(site, "ops") as late:  # a late subscriber gets the retained birth
            late.subscribe("exam/site01/+/status")
            got = late.wait_for(online)
            assert got[0].retain
        assert agent.terminate() == 0
    finally:
        agent.kill()


def test_install_stages_config_and_refuses_a_bad_bundle(site: Site, tmp_path: Path) -> None:
    """install.sh --destdir: never this machine's /etc or systemd. A bad bundle leaves the old config."""
    out = tmp_path / "bundles"
    run(sys.executable, CONFIGS, "--pki", site.pki, "--site", SITE, "--broker-host", "127.0.0.1",
        "--out", out)
    dest = tmp_path / "root"
    env = {**os.environ, "PYTHON": sys.executable}
    install = [str(REPO / "deploy/install.sh"), "--destdir", str(dest), "--config-only"]
    r = subprocess.run([*install, str(out / "room101")], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    etc = dest / "etc/examroom"
    modes = {p.relative_to(etc).as_posix(): p.stat().st_mode & 0o777 for p in etc.rglob("*")}
    # the key, the seat plan and the config (a broker password may be in it): the service user's
    # only (owner examroom on a box); cli.toml is what examroom-ops use instead of agent.toml
    assert modes == {"agent.toml": 0o600, "seatplan.csv": 0o600, "cli.toml": 0o644, "tls": 0o750,
                     "tls/ca.crt": 0o644, "tls/room.crt": 0o644, "tls/room.key": 0o600}
    assert etc.stat().st_mode & 0o777 == 0o750
    cli = load(etc / "cli.toml")
    assert cli.control["socket"] == "/run/examroom/agent.sock" and cli.room["id"] == "room101"
    assert not cli.mqtt["tls_key"] and "tls" not in (etc / "cli.toml").read_text(encoding="utf-8")
    assert load(etc / "agent.toml").mqtt["tls_key"] == str(etc / "tls/room.key")
    assert (dest / "etc/systemd/system/examroom-agent.service").is_file()
    bad = tmp_path / "bad"
    shutil.copytree(out / "room102", bad)
    (bad / "agent.toml").write_text((bad / "agent.toml").read_text().replace('"room102"', '"room 102"'))
    r = subprocess.run([*install, str(bad)], capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 1 and "left as it was" in r.stderr
    assert load(etc / "agent.toml").room["id"] == "room101"
