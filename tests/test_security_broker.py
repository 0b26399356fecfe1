"""The site broker as a security boundary: a live TLS Mosquitto run from deploy/mosquitto/examroom.conf
with the PKI of deploy/pki/make-pki.sh and the ACL of deploy/mosquitto/make-acl.py, driven through
identity x action.

Identities: room A (site01-room101), room B (site01-room102), the aggregator, an operator (ops), no
certificate, a certificate of another CA with room A's CN, an expired certificate and a revoked one.
Actions: publishing each class of topic (a refusal is PUBACK 135 with MQTT v5) and reading (tested by
delivery: Mosquitto grants every SUBACK and filters per message). Then revocation live: a working
room certificate is revoked, the broker reloads the CRL, and its key is refused at the handshake.

One broker for the module; the tests that change the CRL put it back.
"""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.subscribeoptions import SubscribeOptions

from devkit.localbroker import Broker, free_port
from tests.site_kit import broker_conf
from examroom.agent.commands import REMOTE

REPO = Path(__file__).resolve().parent.parent
PKI = REPO / "deploy/pki/make-pki.sh"
ACL = REPO / "deploy/mosquitto/make-acl.py"
SITE = "site01"
S = f"exam/{SITE}"
NOT_AUTHORIZED = 135
A, B = "site01-room101", "site01-room102"
LIVE = "site01-room103"      # revoked during test_revocation_end_to_end
REVOKED = "site01-room104"   # revoked before the broker starts
CYCLE = "site01-room105"     # renew / --force
ROOMS = ("room101", "room102", "room103", "room104", "room105")


def _load_acl_module() -> Any:
    spec = importlib.util.spec_from_file_location("make_acl", ACL)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


make_acl = _load_acl_module()
READ_ONLY = make_acl.READ_ONLY_COMMANDS
DISRUPTIVE = make_acl.DISRUPTIVE_COMMANDS


def run(*cmd: Any, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], check=False, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}: {r.stdout}{r.stderr}"
    return r


class Lab:
    """A site PKI, an impostor PKI, hand-made bad certificates, and one broker."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki = root / "pki"
        self.port = free_port()
        self.creds: dict[str, tuple[str, str, str]] = {}  # identity -> (ca, cert, key) kept outside pki/
        self.broker: Broker | None = None

    def keep(self, identity: str, cert: Path, key: Path, ca: Path | None = None) -> None:
        """Copy a certificate and key aside: what a thief holds, whatever make-pki.sh does to pki/ later."""
        d = self.root / "held" / identity
        d.mkdir(parents=True, exist_ok=True)
        shutil.copy(cert, d / "c.crt")
        shutil.copy(key, d / "c.key")
        self.creds[identity] = (str(ca or self.pki / "ca.crt"), str(d / "c.crt"), str(d / "c.key"))

    def make(self) -> "Lab":
        run("bash", PKI, self.pki, "init", SITE, "localhost", "127.0.0.1")
        for room in ROOMS:
            run("bash", PKI, self.pki, "room", SITE, room)
        for client in ("aggregator", "ops"):
            run("bash", PKI, self.pki, "client", client)
        for cn in (A, B, "aggregator", "ops", REVOKED):
            self.keep(cn, self.pki / f"certs/{cn}.crt", self.pki / f"private/{cn}.key")
        run("bash", PKI, self.pki, "revoke", REVOKED)
        self.creds["revoked"] = self.creds.pop(REVOKED)
        # another CA, same site name, a certificate with room A's CN: the broker must not care about names
        other = self.root / "other-pki"
        run("bash", PKI, other, "init", SITE, "localhost")
        run("bash", PKI, other, "room", SITE, "room101")
        self.keep("wrong CA", other / f"certs/{A}.crt", other / f"private/{A}.key", ca=self.pki / "ca.crt")
        self.make_expired()
        run(sys.executable, ACL, "--site", SITE, *[x for r in ROOMS for x in ("--room", r)],
            "--aggregator", "aggregator", "--operator", "ops", "-o", self.root / "acl")
        (self.root / "mosquitto.conf").write_text(broker_conf(self.root, self.pki, self.port))
        return self

    def ca_conf(self, db: Path) -> Path:
        """An `openssl ca` config on the site CA with its own database (not the site's index.txt)."""
        db.mkdir(exist_ok=True)
        (db / "index.txt").touch()
        (db / "crlnumber").write_text("01\n")
        conf = db / "ca.cnf"
        conf.write_text(f"""[ca]
default_ca = t
[t]
dir = {db}
database = $dir/index.txt
new_certs_dir = $dir
serial = $dir/serial
crlnumber = $dir/crlnumber
certificate = {self.pki}/ca.crt
private_key = {self.pki}/private/ca.key
default_md = sha256
policy = p
unique_subject = no
[p]
commonName = supplied
organizationName = optional
organizationalUnitName = optional
""")
        return conf

    def make_expired(self) -> None:
        """Room A's CN, signed by the site CA, valid for January 2024 only (openssl ca -startdate/-enddate)."""
        d = self.root / "expired"
        conf = self.ca_conf(d)
        run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", d / "c.key")
        run("openssl", "req", "-new", "-key", d / "c.key", "-subj", f"/O=examroom/OU={SITE}/CN={A}",
            "-out", d / "c.csr")
        (d / "ext").write_text("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                               "extendedKeyUsage=clientAuth\n")
        run("openssl", "ca", "-batch", "-config", conf, "-in", d / "c.csr", "-out", d / "c.crt", "-notext",
            "-preserveDN", "-rand_serial", "-startdate", "20240101000000Z", "-enddate", "20240201000000Z",
            "-extfile", d / "ext")
        self.keep("expired", d / "c.crt", d / "c.key")

    def start(self) -> "Lab":
        self.broker = Broker(self.root, self.port, conf=(self.root / "mosquitto.conf").read_text()).start()
        return self

    def restart(self) -> None:
        self.broker.stop()
        self.start()

    def reload(self) -> None:
        """systemctl reload mosquitto: SIGHUP; returns once the broker has logged it. Mosquitto
        reloads in its one network thread, so a connection made after that line meets the new
        configuration and CRL."""
        before = self.log().count("Reloading config.")
        self.broker.proc.send_signal(signal.SIGHUP)
        until(lambda: self.log().count("Reloading config.") > before)

    def log(self) -> str:
        return (self.root / "mosquitto.log").read_text(errors="replace")

    def current(self, cn: str) -> tuple[str, str, str]:
        return str(self.pki / "ca.crt"), str(self.pki / f"certs/{cn}.crt"), str(self.pki / f"private/{cn}.key")


class Client:
    """A paho MQTT v5 client over TLS recording the CONNACK, PUBACK reason codes and messages."""

    def __init__(self, lab: Lab, creds: tuple[str, str | None, str | None]) -> None:
        self.lab = lab
        self.cond = threading.Condition()
        self.connack: Any = None
        self.acks: dict[int, int] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.gone = threading.Event()
        self.subscribed = threading.Event()
        ca, cert, key = creds
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        self.c.tls_set(ca_certs=ca, certfile=cert, keyfile=key, cert_reqs=ssl.CERT_REQUIRED)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = self._on_disconnect
        self.c.on_publish = self._on_publish
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *_: self.subscribed.set()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self.cond:
            self.connack = reason
            self.cond.notify_all()

    def _on_disconnect(self, *_: Any) -> None:
        with self.cond:
            self.gone.set()
            self.cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self.cond:
            self.acks[mid] = reason.value
            self.cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def attempt(self) -> bool:
        """Connect; True on a successful CONNACK, False on any refusal (handshake, CONNACK, hang-up).
        The network loop runs here until the CONNACK (a refusal is then seen at once, without paho's
        reconnect wait), in its own thread after."""
        t0 = time.monotonic()
        try:
            self.c.connect("127.0.0.1", self.lab.port, keepalive=10)
            while self.connack is None and time.monotonic() - t0 < 5:
                if self.c.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS:
                    break
        except (ssl.SSLError, OSError):
            pass  # TLS 1.2: the broker's refusal of our certificate fails the handshake
        self.elapsed = time.monotonic() - t0
        ok = self.connack is not None and not self.connack.is_failure and not self.gone.is_set()
        if ok:
            self.c.loop_start()
        else:
            self.c.socket() and self.c.disconnect()
        return ok

    def __enter__(self) -> "Client":
        assert self.attempt(), f"connection refused: {self.connack}"
        return self

    def close(self) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def __exit__(self, *_: object) -> None:
        self.close()

    def publish(self, topic: str, payload: bytes = b"{}", retain: bool = False) -> int:
        """QoS 1; the PUBACK reason code (0 success, 16 no subscribers, 135 not authorized)."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        with self.cond:
            assert self.cond.wait_for(lambda: info.mid in self.acks, 5), f"no PUBACK for {topic}"
            return self.acks[info.mid]

    def subscribe(self, topic: str, retain_handling: int = 0) -> None:
        self.subscribed.clear()
        self.c.subscribe(topic, options=SubscribeOptions(qos=1, retainHandling=retain_handling))
        assert self.subscribed.wait(5)

    def wait_for(self, pred: Any, timeout: float = 5) -> list[mqtt.MQTTMessage]:
        with self.cond:
            ok = self.cond.wait_for(lambda: pred(self.messages), timeout)
            assert ok, f"not received in {timeout}s; got {[(m.topic, m.payload) for m in self.messages]}"
            return list(self.messages)


def connects(lab: Lab, creds: tuple[str, str | None, str | None]) -> bool:
    c = Client(lab, creds)
    ok = c.attempt()
    if ok:
        c.close()
    return ok


def until(pred: Any, timeout: float = 5) -> float:
    """Seconds until pred() is true (polling a broker from outside: there is no event to wait on)."""
    t0 = time.monotonic()
    while not pred():
        assert time.monotonic() - t0 < timeout, "condition not reached"
        time.sleep(0.05)
    return time.monotonic() - t0


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    lab = Lab(tmp_path_factory.mktemp("secbroker")).make().start()
    yield lab
    lab.broker.stop()


# -- the matrix ------------------------------------------------------------------------------------

ROOM_TOPICS = ("status", "heartbeat", "event/note", "reply/ping")


def topic_classes() -> list[str]:
    """One topic of every class, seen from room A (room101)."""
    topics = [f"{S}/room101/{t}" for t in ROOM_TOPICS]             # room A's own
    topics += [f"{S}/room102/{t}" for t in ROOM_TOPICS]            # room B's own
    topics += [f"{S}/room101/cmd/{c}" for c in READ_ONLY + DISRUPTIVE]
    topics += [f"{S}/broadcast/cmd/{c}" for c in READ_ONLY + DISRUPTIVE]
    topics += [f"{S}/room101/cmd/checkin_admit", f"{S}/room101/cmd/sim",  # not remote commands
               f"{S}/room101/cmd/ping/extra", f"{S}/room101/status/extra",
               f"{S}/room101/state", "exam/site02/room101/status", "exam/site02/room101/cmd/ping"]
    return topics


def may_write(identity: str, topic: str) -> bool:
    """The role matrix of docs/deployment.md, written independently of make-acl.py."""
    if identity in (A, B):
        base = f"{S}/{identity.removeprefix(SITE + '-')}"
        return topic in (f"{base}/status", f"{base}/heartbeat") or \
            bool(re.fullmatch(rf"{re.escape(base)}/(event|reply)/.+", topic))
    m = re.fullmatch(rf"{re.escape(S)}/[^/]+/cmd/([^/]+)", topic)
    if identity == "aggregator":
        return bool(m) and m.group(1) in ("ping", "status", "selftest", "exam_lock", "time_check")
    if identity == "ops":
        return bool(m) and m.group(1) in ("ping", "status", "selftest", "exam_lock", "time_check", "note", "snapshot",
                                          "audio_switch", "trial_listening", "push", "seatplan_expect")
    raise AssertionError(identity)


def may_read(identity: str, topic: str) -> bool:
    if identity in (A, B):
        room = identity.removeprefix(SITE + "-")
        return topic.startswith((f"{S}/{room}/cmd/", f"{S}/broadcast/cmd/"))
    return topic.startswith(f"{S}/")  # aggregator and operator read the whole site, and only it


def test_the_acl_lists_every_remote_command_in_exactly_one_class() -> None:
    assert set(READ_ONLY) | set(DISRUPTIVE) == set(REMOTE)
    assert not set(READ_ONLY) & set(DISRUPTIVE)
    assert set(READ_ONLY) == {"ping", "status", "selftest", "exam_lock", "time_check"}


@pytest.mark.parametrize("identity", [A, B, "aggregator", "ops"])
def test_publish_matrix(lab: Lab, identity: str) -> None:
    with Client(lab, lab.creds[identity]) as c:
        got = {t: c.publish(t) for t in topic_classes()}
    allowed = {t for t in got if may_write(identity, t)}
    assert allowed, identity  # each identity may write something: the matrix is not all refusals
    assert {t for t, code in got.items() if code < 0x80} == allowed
    assert {t for t, code in got.items() if code >= 0x80} == set(got) - allowed
    assert {code for t, code in got.items() if t not in allowed} == {NOT_AUTHORIZED}


def test_read_matrix_by_delivery(lab: Lab) -> None:
    """Everyone subscribes to everything (granted); what each one is delivered is its read right."""
    readers = {who: Client(lab, lab.creds[who]) for who in (A, B, "aggregator", "ops")}
    for c in readers.values():
        c.__enter__()
    try:
        for c in readers.values():
            c.subscribe("#")
        sent: list[str] = []
        for who in (A, B):  # each room publishes its own topics
            room = who.removeprefix(SITE + "-")
            for t in ROOM_TOPICS:
                assert readers[who].publish(f"{S}/{room}/{t}", b"r") < 0x80
                sent.append(f"{S}/{room}/{t}")
        for target in ("room101", "room102", "broadcast"):  # the operator sends every command
            for cmd in READ_ONLY + DISRUPTIVE:
                assert readers["ops"].publish(f"{S}/{target}/cmd/{cmd}", b"r") < 0x80
                sent.append(f"{S}/{target}/cmd/{cmd}")
        # acknowledged = routed: a last message everyone may read arrives after all of the above
        assert readers["ops"].publish(f"{S}/broadcast/cmd/ping", b"end") < 0x80
        for who, c in readers.items():
            got = c.wait_for(lambda ms: any(m.payload == b"end" for m in ms))
            delivered = [m.topic for m in got if m.payload == b"r"]
            assert delivered == [t for t in sent if may_read(who, t)], who
            assert not any(m.topic.startswith("$SYS") for m in got), who
    finally:
        for c in readers.values():
            c.close()


@pytest.mark.parametrize("identity", ["no certificate", "wrong CA", "expired", "revoked"])
def test_refused_at_connect(lab: Lab, identity: str) -> None:
    creds = (str(lab.pki / "ca.crt"), None, None) if identity == "no certificate" else lab.creds[identity]
    if identity in ("wrong CA", "expired"):  # refused for the reason named, not by accident
        v = subprocess.run(["openssl", "verify", "-CAfile", creds[0], "-purpose", "sslclient", creds[1]],
                           check=False, capture_output=True, text=True)
        assert v.returncode != 0
        assert ("has expired" if identity == "expired" else "unable to get local issuer") in v.stdout + v.stderr
    assert not connects(lab, creds)
    assert connects(lab, lab.creds[A])  # the broker is fine; it is this identity it refuses


def test_retained_commands_are_accepted_by_the_broker_and_never_reach_a_room_as_retained(lab: Lab) -> None:
    """Mosquitto's ACL file has no retain rule: a retained command is stored (PUBACK 0). The room
    subscribes with retain handling 2 (as the agent's uplink does) so a stored one is not sent to it,
    and a live subscriber gets the publish once, without the retain flag; the agent refuses any
    command that arrives retained (tests/test_remote_commands.py)."""
    topic = f"{S}/room101/cmd/note"
    with Client(lab, lab.creds[A]) as room, Client(lab, lab.creds["ops"]) as ops:
        room.subscribe(f"{S}/room101/cmd/+", retain_handling=2)
        assert ops.publish(topic, b'{"id": "r1"}', retain=True) == 0  # not refused: the broker cannot
        live = room.wait_for(lambda ms: ms)
        assert [(m.topic, m.retain) for m in live] == [(topic, False)]
    with Client(lab, lab.creds[A]) as again:  # a reconnecting room, subscribing as the agent does
        again.subscribe(f"{S}/room101/cmd/+", retain_handling=2)
        with Client(lab, lab.creds["aggregator"]) as agg:
            agg.subscribe(f"{S}/#")  # the stored copy exists: a plain subscriber sees it, retained
            stored = agg.wait_for(lambda ms: [m for m in ms if m.topic == topic])
            assert [m.retain for m in stored if m.topic == topic] == [True]
            assert agg.publish(topic, b"", retain=True) == NOT_AUTHORIZED  # only an operator may clear it
        assert again.messages == []
    with Client(lab, lab.creds["ops"]) as ops:
        assert ops.publish(topic, b"", retain=True) < 0x80  # clear it: the operator's job
    with Client(lab, lab.creds["aggregator"]) as agg:
        agg.subscribe(f"{S}/room101/cmd/#")
        time.sleep(0.3)  # nothing to wait for: the absence of a retained message
        assert agg.messages == []


# -- revocation --------------------------------------------------------------------------------------

def test_revocation_end_to_end(lab: Lab) -> None:
    """A working room certificate; make-pki.sh revoke; SIGHUP: new connections with the old key are
    refused, the connected one stays until a restart; a new certificate works."""
    lab.keep(LIVE, *[Path(p) for p in lab.current(LIVE)[1:]])
    stolen = lab.creds[LIVE]
    assert connects(lab, stolen)
    t0 = time.monotonic()
    out = run("bash", PKI, lab.pki, "revoke", LIVE)
    t_revoke = time.monotonic() - t0
    assert "1 certificate(s) revoked" in out.stdout
    assert not (lab.pki / f"certs/{LIVE}.crt").exists() and not (lab.pki / f"private/{LIVE}.key").exists()
    assert connects(lab, stolen), "the broker has not read the new CRL yet: still accepted"
    # (one connection per certificate at a time: use_username_as_clientid makes a second one take over)
    with Client(lab, stolen) as connected:  # the thief, connected when the CRL is reloaded
        assert connected.publish(f"{S}/room103/status") < 0x80
        t0 = time.monotonic()
        lab.reload()
        t_reload = until(lambda: not connects(lab, stolen)) + (time.monotonic() - t0)
        print(f"\nrevoke command {t_revoke:.2f}s; SIGHUP to refusal {t_reload:.2f}s")
        # Mosquitto 2.0 re-reads the CRL on SIGHUP but does not drop a client already connected
        assert connected.c.is_connected() and not connected.gone.is_set()
        assert connected.publish(f"{S}/room103/heartbeat") < 0x80
        assert connects(lab, lab.creds[A])
        connected.c.reconnect_delay_set(30, 60)  # after the restart, no retry within this test
        t0 = time.monotonic()
        lab.restart()
        assert connected.gone.wait(5), "a restart drops every connection"
        print(f"restart {time.monotonic() - t0:.2f}s")
    assert not connects(lab, stolen)
    assert connects(lab, lab.creds[A])
    run("bash", PKI, lab.pki, "room", SITE, "room103")  # the box's new certificate: no --force needed
    assert connects(lab, lab.current(LIVE))
    assert not connects(lab, stolen)


def test_renew_and_force_reissue(lab: Lab) -> None:
    """renew keeps the key and the old certificate valid; --keep-current retires the old one; --force
    revokes what the name had and makes a new key."""
    lab.keep("cycle-1", *[Path(p) for p in lab.current(CYCLE)[1:]])
    pub = lambda creds: run("openssl", "x509", "-in", creds[1], "-noout", "-pubkey").stdout  # noqa: E731
    out = run("bash", PKI, lab.pki, "renew", CYCLE)
    assert "same key" in out.stdout
    lab.keep("cycle-2", *[Path(p) for p in lab.current(CYCLE)[1:]])
    assert pub(lab.creds["cycle-2"]) == pub(lab.creds["cycle-1"])
    assert Path(lab.creds["cycle-2"][1]).read_bytes() != Path(lab.creds["cycle-1"][1]).read_bytes()
    lab.reload()
    assert connects(lab, lab.creds["cycle-1"]) and connects(lab, lab.creds["cycle-2"])
    run("bash", PKI, "--keep-current", lab.pki, "revoke", CYCLE)
    lab.reload()
    until(lambda: not connects(lab, lab.creds["cycle-1"]))
    assert connects(lab, lab.creds["cycle-2"])
    out = run("bash", PKI, "--new-key", lab.pki, "renew", CYCLE)
    assert "NEW key" in out.stdout
    assert pub(lab.current(CYCLE)) != pub(lab.creds["cycle-2"])
    lab.keep("cycle-3", *[Path(p) for p in lab.current(CYCLE)[1:]])
    out = run("bash", PKI, "--force", lab.pki, "room", SITE, "room105")
    assert "2 old certificate(s)" in out.stdout  # cycle-2 and cycle-3: both still valid until now
    lab.reload()
    until(lambda: not connects(lab, lab.creds["cycle-3"]))
    assert not connects(lab, lab.creds["cycle-2"])
    assert connects(lab, lab.current(CYCLE))
    index = (lab.pki / "index.txt").read_text()
    assert index.count(f"CN={CYCLE}\n") == 4 and len(re.findall(rf"^R\t.*CN={CYCLE}$", index, re.M)) == 3


def test_a_broken_crl_on_reload_turns_revocation_off(lab: Lab) -> None:
    """Mosquitto 2.0.11, as observed: a CRL it cannot load on SIGHUP is logged, the broker keeps running
    and then accepts revoked certificates (fail open) until a good CRL is loaded. Hence
    deploy/mosquitto/install-crl.sh checks a CRL before it installs it."""
    crl = lab.pki / "crl.pem"
    good = crl.read_bytes()
    try:
        crl.write_text("not a CRL\n")
        lab.reload()
        until(lambda: "Unable to load certificate revocation file" in lab.log())
        assert lab.broker.proc.poll() is None  # still running
        assert connects(lab, lab.creds[A])
        assert connects(lab, lab.creds["revoked"])  # what this test is about
        assert not connects(lab, lab.creds["expired"])  # the rest of certificate checking still holds
    finally:
        crl.write_bytes(good)
        lab.reload()
    assert not connects(lab, lab.creds["revoked"])
    assert connects(lab, lab.creds[A])


def test_a_crl_past_its_next_update_locks_everyone_out(lab: Lab) -> None:
    """Why `make-pki.sh crl` must run before the CRL's next update (docs/deployment.md)."""
    crl = lab.pki / "crl.pem"
    good = crl.read_bytes()
    try:
        conf = lab.ca_conf(lab.root / "stale-crl")
        run("openssl", "ca", "-batch", "-config", conf, "-gencrl", "-crl_lastupdate", "20240101000000Z",
            "-crl_nextupdate", "20240201000000Z", "-out", crl)
        with Client(lab, lab.creds["aggregator"]) as agg:
            lab.reload()
            until(lambda: not connects(lab, lab.creds[A]))
            assert agg.c.is_connected()  # those connected stay; every new connection is refused
    finally:
        crl.write_bytes(good)
        lab.reload()
    until(lambda: connects(lab, lab.creds[A]))


# -- the kit's files -----------------------------------------------------------------------------------

def test_acl_file_is_0640_and_roles_are_exclusive(tmp_path: Path) -> None:
    out = tmp_path / "acl"
    run(sys.executable, ACL, "--site", SITE, "--room", "room101", "--operator", "ops", "-o", out)
    assert out.stat().st_mode & 0o777 == 0o640
    text = out.read_text()
    assert "user aggregator" not in text and f"topic write {S}/+/cmd/audio_switch" in text
    r = subprocess.run([sys.executable, str(ACL), "--site", SITE, "--room", "room101", "--aggregator", "x",
                        "--operator", "x"], check=False, capture_output=True, text=True)
    assert r.returncode == 2 and "one role" in r.stderr


def test_ca_key_with_a_passphrase(tmp_path: Path) -> None:
    pki, pw = tmp_path / "pki", tmp_path / "ca.pass"
    pw.write_text("correct horse battery staple\n")
    run("bash", PKI, "--ca-pass-file", pw, pki, "init", SITE, "localhost")
    assert (pki / "private/ca.key").read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    r = subprocess.run(["bash", str(PKI), str(pki), "room", SITE, "room1"], check=False,
                       capture_output=True, text=True,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and "encrypted" in r.stderr and not (pki / f"certs/{SITE}-room1.crt").exists()
    bad = tmp_path / "bad.pass"
    bad.write_text("wrong\n")
    r = subprocess.run(["bash", str(PKI), "--ca-pass-file", str(bad), str(pki), "client", "ops"],
                       check=False, capture_output=True, text=True)
    assert r.returncode == 1 and "passphrase" in r.stderr
    run("bash", PKI, pki, "room", SITE, "room1", env={**os.environ, "MAKE_PKI_CA_PASS_FILE": str(pw)})
    run("bash", PKI, "--ca-pass-file", pw, pki, "revoke", f"{SITE}-room1")
    assert "Serial Number" in run("openssl", "crl", "-in", pki / "crl.pem", "-noout", "-text").stdout
    # an existing plain CA key is encrypted by init --ca-pass-file
    plain = tmp_path / "plain"
    run("bash", PKI, plain, "init", SITE, "localhost")
    assert "ENCRYPTED" not in (plain / "private/ca.key").read_text()
    run("bash", PKI, "--ca-pass-file", pw, plain, "init", SITE, "localhost")
    assert (plain / "private/ca.key").read_text().startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert (plain / "private/ca.key").stat().st_mode & 0o777 == 0o600


def test_certificates_issued_before_the_ca_database_can_be_revoked(tmp_path: Path) -> None:
    """A PKI made by the old script (openssl x509 -req, no index.txt) is adopted at the next run."""
    pki = tmp_path / "pki"
    (pki / "certs").mkdir(parents=True)
    (pki / "private").mkdir(mode=0o700)
    run("bash", PKI, pki, "init", SITE, "localhost")
    key, cert = pki / "private/legacy.key", pki / "certs/legacy.crt"
    run("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", key)
    csr = run("openssl", "req", "-new", "-key", key, "-subj", f"/O=examroom/OU={SITE}/CN=legacy").stdout
    subprocess.run(["openssl", "x509", "-req", "-CA", str(pki / "ca.crt"), "-CAkey", str(pki / "private/ca.key"),
                    "-set_serial", "0x00ab" + "cd" * 15, "-days", "3650", "-out", str(cert)],
                   input=csr, text=True, check=True, capture_output=True)
    out = run("bash", PKI, pki, "revoke", "legacy")
    assert "recorded" in out.stdout and "1 certificate(s) revoked" in out.stdout
    crl = run("openssl", "crl", "-in", pki / "crl.pem", "-noout", "-text").stdout
    assert "ABCDCDCD" in crl.replace(":", "").upper()
    listing = run("bash", PKI, pki, "list").stdout
    assert "server" in listing and "next update" in listing


def test_install_crl_checks_before_it_installs(lab: Lab, tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    shutil.copy(lab.pki / "ca.crt", etc / "ca.crt")
    install = ["bash", str(REPO / "deploy/mosquitto/install-crl.sh"), "--no-service", "--etc", str(etc)]

    def refused(crl: Path, why: str) -> None:
        r = subprocess.run([*install, str(crl)], check=False, capture_output=True, text=True)
        assert r.returncode == 1 and why in r.stderr, r.stdout + r.stderr

    out = run(*install, lab.pki / "crl.pem").stdout
    assert "installed" in out and (etc / "crl.pem").read_bytes() == (lab.pki / "crl.pem").read_bytes()
    assert (etc / "crl.pem").stat().st_mode & 0o777 == 0o644
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a CRL\n")
    refused(garbage, "is not a CRL of the CA")
    refused(tmp_path / "missing.pem", "no such file")
    other = tmp_path / "other"
    run("bash", PKI, other, "init", SITE, "localhost")
    refused(other / "crl.pem", "is not a CRL of the CA")  # openssl crl -CAfile exits 0 here: "verify failure"
    stale = tmp_path / "stale.pem"
    run("openssl", "ca", "-batch", "-config", lab.ca_conf(tmp_path / "db"), "-gencrl", "-crl_lastupdate",
        "20240101000000Z", "-crl_nextupdate", "20240201000000Z", "-out", stale)
    refused(stale, "past its next update")
    older = tmp_path / "older.pem"  # a CRL number lower than the installed one would un-revoke
    run("openssl", "ca", "-batch", "-config", lab.ca_conf(tmp_path / "db2"), "-gencrl", "-crldays", "30",
        "-out", older)
    refused(older, "older than the installed one")
    assert (etc / "crl.pem").read_bytes() == (lab.pki / "crl.pem").read_bytes()
