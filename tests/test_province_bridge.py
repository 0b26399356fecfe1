"""The provincial link (省级平台): the bridge of deploy/mosquitto/make-bridge.py between two real
Mosquittos on loopback.

The site broker runs the shipped TLS config, PKI and ACL (tests/site_kit.py) with the generated
bridge in its conf.d, as Debian installs them. The province is a second Mosquitto: TLS requiring a
client certificate of the province's own CA, an ACL per site certificate CN, persistence. The
bridge's address list names the province and a dead node of "the cluster" (round robin).

What it proves: only the chosen topics leave the site, under province/site01/..., events at QoS 1,
heartbeats at QoS 0, status kept retained at the province; check-ins, sweeps, notes, session
records, replies never do; the province's pushes reach every room, though the site's ACL grants
nobody that topic, and a push published while the site's broker is down arrives when it is back;
a link killed while 200 events are published loses none of them, and the link state topic says
down, then up.
"""
from __future__ import annotations

import functools
import importlib.util
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from devkit.localbroker import Broker, free_port
from tests.schemas import load_schemas, validator
from tests.site_kit import REPO, SITE, Site, broker_conf, run

BRIDGE = REPO / "deploy/mosquitto/make-bridge.py"
STATE = "$SYS/broker/connection/province/state"
OUT = f"province/{SITE}/room101"
TS = "2026-06-08T15:12:03.400+08:00"
# The province's side, as its operator would write it: each site writes only under its own name and
# reads only its pushes; the province's ingest reads every site and pushes.
PROVINCE_ACL = "\n".join([f"user {SITE}", f"topic write province/{SITE}/#", f"topic read province/{SITE}/push",
                          "topic read province/all/push", "user ingest", "topic read province/#",
                          "topic write province/+/push", ""])
CLIENT_EXT = "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n"


def province_pki(d: Path) -> None:
    """The province's CA and broker certificate, its ingest client, and the site's certificate: the
    site makes the key and the request, the province signs it (docs/deployment.md)."""
    d.mkdir()

    def key(name: str) -> None:
        run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256",
            "-out", d / f"{name}.key")

    def sign(name: str, cn: str, ext: str) -> None:
        run("openssl", "req", "-new", "-key", d / f"{name}.key", "-subj", f"/O=province/CN={cn}",
            "-out", d / f"{name}.csr")
        (d / f"{name}.ext").write_text(ext)
        run("openssl", "x509", "-req", "-in", d / f"{name}.csr", "-CA", d / "ca.crt", "-CAkey", d / "ca.key",
            "-CAcreateserial", "-days", "2", "-sha256", "-extfile", d / f"{name}.ext", "-out", d / f"{name}.crt")

    key("ca")
    run("openssl", "req", "-new", "-x509", "-key", d / "ca.key", "-sha256", "-days", "2",
        "-subj", "/O=province/CN=province CA", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", d / "ca.crt")
    key("server")
    sign("server", "mqtt.province.test", "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
         "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    for name in (SITE, "ingest"):
        key(name)
        sign(name, name, CLIENT_EXT)


class Peer:
    """A TLS paho v5 client that records every message and PUBACK and waits on conditions.
    ``persistent``: a fixed session kept an hour by the broker, as a real ingest or aggregator has."""

    def __init__(self, port: int, ca: Path, cert: Path, key: Path, client_id: str = "",
                 persistent: bool = False) -> None:
        self.port = port
        self.persistent = persistent
        self.cond = threading.Condition()
        self.messages: list[mqtt.MQTTMessage] = []
        self.acks: dict[int, int] = {}
        self.subacks: set[int] = set()
        self.connack: Any = None  # (reason code, session present)
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
        self.c.tls_set(ca_certs=str(ca), certfile=str(cert), keyfile=str(key), cert_reqs=ssl.CERT_REQUIRED)
        self.c.reconnect_delay_set(0.1, 0.5)  # back soon after a broker restart
        self.c.on_connect = lambda _c, _u, flags, rc, _p: self._add(
            lambda: setattr(self, "connack", (rc, flags.session_present)))
        self.c.on_message = lambda _c, _u, m: self._add(lambda: self.messages.append(m))
        self.c.on_publish = lambda _c, _u, mid, rc, _p: self._add(lambda: self.acks.__setitem__(mid, rc.value))
        self.c.on_subscribe = lambda _c, _u, mid, *_: self._add(lambda: self.subacks.add(mid))

    def _add(self, change: Callable[[], None]) -> None:
        with self.cond:
            change()
            self.cond.notify_all()

    def __enter__(self) -> Self:
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = 3600 if self.persistent else 0
        self.c.connect("127.0.0.1", self.port, keepalive=10, clean_start=not self.persistent, properties=props)
        self.c.loop_start()
        self.wait(lambda: self.connack is not None, "no CONNACK")
        assert not self.connack[0].is_failure, self.connack
        return self

    def __exit__(self, *_: object) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def wait(self, pred: Callable[[], bool], what: str, timeout: float = 15) -> None:
        with self.cond:
            if not self.cond.wait_for(pred, timeout):
                raise AssertionError(f"{what}; got {[(m.topic, m.payload[:60]) for m in self.messages]}")

    def subscribe(self, topic: str) -> None:
        result, mid = self.c.subscribe(topic, qos=1)
        assert result == mqtt.MQTT_ERR_SUCCESS
        self.wait(lambda: mid in self.subacks, f"no SUBACK for {topic}")

    def publish(self, topic: str, payload: bytes, retain: bool = False) -> None:
        """QoS 1, acknowledged by the broker (it holds the message from then on)."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        self.wait(lambda: info.mid in self.acks, f"no PUBACK for {topic}")
        assert self.acks[info.mid] < 0x80, f"{topic} refused: {self.acks[info.mid]}"

    def on(self, topic: str) -> list[mqtt.MQTTMessage]:
        with self.cond:
            return [m for m in self.messages if m.topic == topic]


@dataclass
class Link:
    """The two brokers of one test, and clients for either side by certificate name."""

    site_pki: Path
    prov_pki: Path
    site: Broker
    province: Broker

    def site_client(self, cn: str, **kw: Any) -> Peer:
        return Peer(self.site.port, self.site_pki / "ca.crt", self.site_pki / f"certs/{cn}.crt",
                    self.site_pki / f"private/{cn}.key", **kw)

    def province_client(self, cn: str, **kw: Any) -> Peer:
        return Peer(self.province.port, self.prov_pki / "ca.crt", self.prov_pki / f"{cn}.crt",
                    self.prov_pki / f"{cn}.key", **kw)


@functools.cache
def schema(name: str) -> Callable[[Any], None]:
    """The contract's schema ``name`` (docs/mqtt.md and friends), parsed once; a no-op for a kind the
    contract does not describe yet."""
    return validator(name).validate if name in load_schemas() else lambda _: None


def payload(name: str, doc: dict[str, Any]) -> bytes:
    """``doc`` as a room publishes it, checked against the contract first."""
    schema(name)(doc)
    return json.dumps(doc).encode()


def event(kind: str, seq: int, data: dict[str, Any]) -> bytes:
    schema(f"data/{kind}")(data)
    return payload("event", {"id": str(uuid.uuid4()), "seq": seq, "ts": TS, "kind": kind, "session": 3,
                             "replayed": False, "data": data})


def heartbeat(n: int) -> bytes:
    """The room's heartbeat, numbered by ``uptime_s``."""
    return payload("heartbeat", {
        "ts": TS, "session": 3, "state": "online", "alerts": [], "uptime_s": n, "rtt_ms": None, "devices": {},
        "spool": {"events": 0, "bytes": 0, "oldest_age_s": 0, "overfull": False, "dropped": {}}, "host": {}})


INCIDENT = {"type": "audio_loss", "device": "broadcast", "session": "eng-am", "cause": "silence",
            "start": TS, "phase": "started"}
SAFE = {  # event kinds the province receives
    "incident": INCIDENT,
    "attendance": {"v": 2, "session": "eng-am", "room": "room101", "time": "2026-06-07T09:15:00.000+08:00",
                   "cutoff": "2026-06-07T09:15:00.000+08:00",
                   "total": 30, "present": 29, "absent": ["7"], "late_refused": [], "manual_admissions": 0,
                   "suspects": [], "pending_sweep": [], "complete": True, "seatplan_sha256": "9f2c"},
    "push": {"push_id": "p1", "text": "考试推迟十分钟", "by": f"site (exam/{SITE}/broadcast/cmd/push)"},
    "push_ack": {"push_id": "p1", "by": "P2", "after_s": 4.2, "user": "proctor"},
    "selftest": {"ok": True, "results": []},
    "forced": {"action": "audio_switch", "by": "ops1", "reason": "primary feed dead", "lock": "listening window"},
}
PERSONAL = {  # and those that stay at the site
    "checkin": {"v": 2, "session": "eng-am", "verdict": "admitted", "seat": "3", "ticket": "20260003",
                "id_masked": "410105********3456", "method": "card", "device": "idreader",
                "time": "2026-06-07T08:40:00.000+08:00", "seatplan_sha256": "9" * 64},
    "sweep": {"v": 2, "session": "eng-am", "seat": None, "unassociated": True, "trigger": "alarm", "device": "det",
              "time": "2026-06-07T08:00:00.000+08:00"},
    "suspect_confirm": {"v": 2, "session": "eng-am", "seat": "4", "proctor": "P2",
                        "time": "2026-06-07T08:45:00.000+08:00", "confirmations": 2, "required": 2, "passed": True},
    "note": {"text": "seat 4 asked for water"},
    "session_record": {  # its seats[] rows hold tickets and masked ID numbers
        "v": 2, "session": "eng-am", "room": "room101", "subject": "English",
        "start": "2026-06-07T09:00:00.000+08:00", "end": "2026-06-07T11:00:00.000+08:00",
        "time": "2026-06-07T11:00:00.000+08:00", "seatplan_sha256": "9f2c", "complete": True, "total": 1, "present": 1,
        **dict.fromkeys(("manual_admissions", "checkin_events"), 0),
        **{k: [] for k in ("files", "absent", "late_refused", "suspects", "unmatched_checkins",
                           "unassociated_sweeps", "incidents")},
        "sweeps": dict.fromkeys(("closed", "with_alarm", "medical_metal_exempt", "not_cleared", "unassociated"), 0),
        "seats": [{"seat": "3", "ticket": "20260003", "id_masked": "410105********3456", "status": "present",
                   "admitted_at": "2026-06-07T08:40:00.000+08:00", "method": "card", "reentries": 0, "sweeps": [],
                   "rechecks": 0,
                   "checkins": [], "suspect_confirmed_by": []}]},
    "snapshot": {"device": "camera", "error": "no working camera",  # kinds not chosen stay too
                 "for": {"kind": "checkin", "id": "x", "session": "eng-am", "seat": "3", "verdict": "admitted"}},
}


@pytest.fixture(scope="module")
def pkis(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("pki")
    site = Site(root / "site").make()  # site CA, room101/102, aggregator, ops; the ACL with the link state
    province_pki(root / "province")
    return site.root, root / "province"


@pytest.fixture
def link(pkis: tuple[Path, Path], tmp_path: Path) -> Iterator[Link]:
    """The province, then the site with the generated bridge in its conf.d. The province's ingest
    holds a durable session that a clean restart of the province has put on its disk, as a real
    province keeps its consumers' sessions: where messages wait while the link is down is the
    site's bridge queue, and after it, that session."""
    site_root, prov_pki = pkis
    (tmp_path / "province.acl").write_text(PROVINCE_ACL)
    pport, port, dead = free_port(), free_port(), free_port()  # dead: a node of "the cluster" that is down
    bridge = subprocess.run(
        [sys.executable, BRIDGE, "--site", SITE, "--province", f"127.0.0.1:{pport}", "--province",
         f"127.0.0.1:{dead}", "--ca", prov_pki / "ca.crt", "--cert", prov_pki / f"{SITE}.crt",
         "--key", prov_pki / f"{SITE}.key", "--restart-timeout", "1 2"],
        capture_output=True, text=True, check=True)
    confd = tmp_path / "conf.d"  # Debian's layout: mosquitto.conf includes conf.d/*.conf in name order
    confd.mkdir()
    shutil.copy(site_root / "acl", tmp_path / "acl")
    (confd / "examroom.conf").write_text(broker_conf(tmp_path, site_root / "pki", port))
    (confd / "bridge-province.conf").write_text(bridge.stdout)
    link = Link(site_root / "pki", prov_pki, Broker(tmp_path / "site", port, conf=f"include_dir {confd}\n"),
                Broker(tmp_path / "province", pport, conf="\n".join([
                    f"listener {pport} 127.0.0.1", f"cafile {prov_pki}/ca.crt", f"certfile {prov_pki}/server.crt",
                    f"keyfile {prov_pki}/server.key", "require_certificate true", "use_identity_as_username true",
                    f"acl_file {tmp_path}/province.acl", "persistence true",
                    f"persistence_location {tmp_path}/province/", "user root" if os.geteuid() == 0 else ""])))
    link.province.start()
    with link.province_client("ingest", client_id="province-ingest", persistent=True) as ingest:
        ingest.subscribe("province/#")
    link.province.stop()
    link.province.start()
    link.site.start()
    yield link
    link.site.stop()
    link.province.stop()


def test_generated_topics_and_refusals(capsys: pytest.CaptureFixture[str]) -> None:
    """The topic lines are exactly the privacy decision; TLS files are mandatory, paths absolute."""
    spec = importlib.util.spec_from_file_location("make_bridge", BRIDGE)
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    good = ["--site", SITE, "--province", "prov-a.example.cn:8883", "--province", "10.2.0.5:8883",
            "--ca", "/etc/p/ca.crt", "--cert", "/etc/p/site.crt", "--key", "/etc/p/site.key"]
    assert gen.main(good) == 0
    text = capsys.readouterr().out
    topics = {tuple(line.split()[1:]) for line in text.splitlines() if line.startswith("topic ")}
    out = (f"exam/{SITE}/", f"province/{SITE}/")
    assert topics == {("+/status", "out", "1") + out, ("+/heartbeat", "out", "0") + out,
                      *[(f"+/event/{k}", "out", "1") + out for k in SAFE],
                      ("push", "in", "1", f"exam/{SITE}/broadcast/cmd/", f"province/{SITE}/"),
                      ("push", "in", "1", f"exam/{SITE}/broadcast/cmd/", "province/all/")}
    for line in ("address prov-a.example.cn:8883 10.2.0.5:8883", "round_robin true", "cleansession false",
                 "bridge_protocol_version mqttv311", f"notification_topic {STATE}", "bridge_insecure false",
                 f"remote_clientid {SITE}", "bridge_keyfile /etc/p/site.key"):
        assert f"\n{line}\n" in text, line
    for wrong in (["--site", "all"], ["--province", "prov:99999"], ["--province", "[::1]:8883"],
                  ["--ca", "ca.crt"], ["--key", "/etc/my keys/site.key"], ["--restart-timeout", "60 5"],
                  ["--restart-timeout", "1"], ["--remote-prefix", "province/#"]):
        args = list(good) + wrong if wrong[0] not in good else \
            [wrong[1] if i and good[i - 1] == wrong[0] else a for i, a in enumerate(good)]
        assert gen.main(args) == 2, wrong
        assert "make-bridge: error:" in capsys.readouterr().err
    with pytest.raises(SystemExit) as no_tls:  # argparse: the certificate is required
        gen.main([a for a in good if a not in ("--key", "/etc/p/site.key")])
    assert no_tls.value.code == 2


def wait_state(agg: Peer, value: bytes, after: int = 0) -> int:
    """Wait until the link state topic's latest value (beyond the first ``after``) is ``value``;
    return how many state messages there are then."""
    agg.wait(lambda: len(agg.on(STATE)) > after and agg.on(STATE)[-1].payload == value,
             f"link state never {value!r}", timeout=20)
    return len(agg.on(STATE))


def test_only_safe_topics_go_out_and_pushes_come_in(link: Link) -> None:
    """Every kind of room traffic once, then a last event: the bridge keeps order, so what has not
    reached the province when the last one has will never reach it."""
    with link.site_client("aggregator") as agg, link.site_client(f"{SITE}-room101") as room, \
            link.province_client("ingest", client_id="province-ingest", persistent=True) as ingest:
        assert ingest.connack[1]  # session present: the province kept its consumer's session across its restart
        agg.subscribe(STATE)
        room.subscribe(STATE)  # the ACL gives the state to the aggregator and operators only
        room.subscribe(f"exam/{SITE}/broadcast/cmd/#")
        wait_state(agg, b"1")
        sent = {f"{OUT}/status": payload("status", {"state": "online", "session": 3, "ts": TS, "site": SITE,
                                                    "room": "room101"}), f"{OUT}/heartbeat": heartbeat(1)}
        room.publish(f"exam/{SITE}/room101/status", sent[f"{OUT}/status"], retain=True)
        room.publish(f"exam/{SITE}/room101/heartbeat", sent[f"{OUT}/heartbeat"])
        for seq, (kind, data) in enumerate((PERSONAL | SAFE).items(), start=1):
            body = event(kind, seq, data)
            room.publish(f"exam/{SITE}/room101/event/{kind}", body)
            if kind in SAFE:
                sent[f"{OUT}/event/{kind}"] = body
        room.publish(f"exam/{SITE}/room101/reply/ping", b'{"request_id": 1, "command": "ping", "ok": true}')
        # The bridge forwards in order: once this last one is at the province, nothing before it is
        # still on its way.
        last = event("incident", 99, INCIDENT | {"phase": "ended", "end": TS, "duration_s": 0.0})
        room.publish(f"exam/{SITE}/room101/event/incident", last)
        ingest.wait(lambda: any(m.payload == last for m in ingest.messages), "the last event never came")
        got = {m.topic: m for m in ingest.messages if m.topic.startswith(f"province/{SITE}/") and m.payload != last}
        assert set(got) == set(sent), "forwarded: exactly status, heartbeat and the safe events"
        assert {t: m.payload for t, m in got.items()} == sent  # bytes unchanged
        assert {t: m.qos for t, m in got.items()} == {t: 0 if t.endswith("heartbeat") else 1 for t in sent}
        with link.province_client("ingest", client_id="province-audit") as audit:  # status is kept retained
            audit.subscribe(f"province/{SITE}/+/status")
            audit.wait(lambda: any(m.retain for m in audit.on(f"{OUT}/status")), "no retained status")

        pushes = [json.dumps({"id": n, "args": {"push_id": f"p{n}", "text": "考试推迟十分钟"}}).encode()
                  for n in range(3)]
        ingest.publish("province/site02/push", pushes[0])  # another site's: never here
        ingest.publish(f"province/{SITE}/push", pushes[1])
        ingest.publish("province/all/push", pushes[2])
        arrived = f"exam/{SITE}/broadcast/cmd/push"
        room.wait(lambda: len(room.on(arrived)) == 2, "the pushes did not reach the room")
        assert [m.payload for m in room.on(arrived)] == pushes[1:]
        assert all(m.qos == 1 and not m.retain for m in room.on(arrived))
        assert not room.on(STATE) and agg.on(STATE)

        # The other way round: a push published while the site is away waits at the province.
        with link.site_client("ops", persistent=True) as ops:  # a durable reader of the site's commands
            ops.subscribe(arrived)
        link.site.stop()
        ingest.publish(f"province/{SITE}/push", pushes[0])
        link.site.start()
        with link.site_client("ops", persistent=True) as ops:
            ops.wait(lambda: [m.payload for m in ops.on(arrived)] == [pushes[0]], "the waiting push never came")


def test_a_dropped_link_queues_and_loses_nothing(link: Link) -> None:
    """The province dies without a goodbye; the room goes on publishing; the province comes back on
    the same port. The events waited in the site broker's queue for the bridge."""
    with link.site_client("aggregator") as agg, link.site_client(f"{SITE}-room101") as room, \
            link.province_client("ingest", client_id="province-ingest", persistent=True) as ingest:
        agg.subscribe(STATE)
        seen = wait_state(agg, b"1")
        beats: list[float] = []  # when each heartbeat was sent; its uptime_s is its number
        stop = threading.Event()

        def heartbeats() -> None:
            while not stop.wait(0.05):
                beats.append(time.monotonic())
                room.c.publish(f"exam/{SITE}/room101/heartbeat", heartbeat(len(beats)), qos=1)

        ticker = threading.Thread(target=heartbeats, daemon=True)
        ticker.start()
        try:
            link.province.kill()  # SIGKILL
            seen = wait_state(agg, b"0", seen)
            down_at = time.monotonic()
            for seq in range(1, 201):  # accepted by the site broker (PUBACK) while the link is down
                room.publish(f"exam/{SITE}/room101/event/incident", event("incident", seq, INCIDENT))
            link.province.start()  # the same port, its disk as it was
            wait_state(agg, b"1", seen)
            back_at = time.monotonic()
            topic = f"{OUT}/event/incident"
            ingest.wait(lambda: len({json.loads(m.payload)["seq"] for m in ingest.on(topic)}) == 200,
                        "events lost across the outage", timeout=20)
        finally:
            stop.set()
            ticker.join()
        events = ingest.on(topic)
        assert sorted({json.loads(m.payload)["seq"] for m in events}) == list(range(1, 201))
        assert all(m.qos == 1 for m in events)
        # Heartbeats go at QoS 0 on the link: while it is down Mosquitto drops them instead of queueing
        # them, except any that come in while a reconnection is under way (seen: 0 or 1 of ~70).
        outage = {n + 1 for n, t in enumerate(beats) if down_at < t < back_at}
        late = outage & {json.loads(m.payload)["uptime_s"] for m in ingest.on(f"{OUT}/heartbeat")}
        assert len(outage) >= 20 and len(late) <= len(outage) // 4, (len(outage), sorted(late))
        states = [m.payload for m in agg.on(STATE)]
        assert states[-1] == b"1" and b"0" in states[states.index(b"1"):], states
