"""The deployment kit as a sysadmin drives it: a generated PKI, broker config and ACL, and a real
TLS Mosquitto, shared by the deployment and hardening tests."""
from __future__ import annotations

import os
import ssl
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from devkit.localbroker import Broker, free_port

REPO = Path(__file__).resolve().parent.parent
PKI = REPO / "deploy/pki/make-pki.sh"
ACL = REPO / "deploy/mosquitto/make-acl.py"
CONFIGS = REPO / "deploy/fleet/make-configs.py"
SITE = "site01"
NOT_AUTHORIZED = 135
ACCEPTED = range(0, 0x80)  # v5: 0 success, 16 "no matching subscribers"; failures are >= 0x80


def run(*cmd: Any) -> subprocess.CompletedProcess:
    r = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, f"{cmd} exited {r.returncode}: {r.stdout}{r.stderr}"
    return r


class Site:
    """The PKI directory and a running broker configured from deploy/mosquitto/examroom.conf."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.pki = root / "pki"
        self.port = free_port()
        self.broker: Broker | None = None

    def make(self) -> "Site":
        run("bash", PKI, self.pki, "init", SITE, "localhost", "127.0.0.1")
        for room in ("room101", "room102"):
            run("bash", PKI, self.pki, "room", SITE, room)
        for client in ("aggregator", "ops"):
            run("bash", PKI, self.pki, "client", client)
        run(sys.executable, ACL, "--site", SITE, "--room", "room101", "--room", "room102",
            "--aggregator", "aggregator", "--aggregator", "ops", "-o", self.root / "acl")
        (self.root / "mosquitto.conf").write_text(broker_conf(self.root, self.pki, self.port))
        return self

    def start(self) -> "Site":
        self.broker = Broker(self.root, self.port, conf=(self.root / "mosquitto.conf").read_text()).start()
        return self

    def stop(self) -> None:
        self.broker.stop()

    def cert(self, cn: str) -> tuple[str, str]:
        return str(self.pki / "certs" / f"{cn}.crt"), str(self.pki / "private" / f"{cn}.key")


class Client:
    """A paho v5 client that records CONNACKs, PUBACK reason codes and messages, and waits on them."""

    def __init__(self, site: Site, cn: str | None) -> None:
        self.site = site
        self.cond = threading.Condition()
        self.acks: dict[int, int] = {}
        self.messages: list[mqtt.MQTTMessage] = []
        self.connack: Any = None
        self.gone = threading.Event()
        self.subscribed = threading.Event()
        self.c = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        cert, key = site.cert(cn) if cn else (None, None)
        self.c.tls_set(ca_certs=str(site.pki / "ca.crt"), certfile=cert, keyfile=key,
                       cert_reqs=ssl.CERT_REQUIRED)
        self.c.on_connect = self._on_connect
        self.c.on_disconnect = lambda *_: self.gone.set()
        self.c.on_publish = self._on_publish
        self.c.on_message = self._on_message
        self.c.on_subscribe = lambda *_: self.subscribed.set()

    def _on_connect(self, _c: Any, _u: Any, _f: Any, reason: Any, _p: Any) -> None:
        with self.cond:
            self.connack = reason
            self.cond.notify_all()

    def _on_publish(self, _c: Any, _u: Any, mid: int, reason: Any, _p: Any) -> None:
        with self.cond:
            self.acks[mid] = reason.value
            self.cond.notify_all()

    def _on_message(self, _c: Any, _u: Any, msg: mqtt.MQTTMessage) -> None:
        with self.cond:
            self.messages.append(msg)
            self.cond.notify_all()

    def __enter__(self) -> "Client":
        self.c.connect("127.0.0.1", self.site.port, keepalive=10)
        self.c.loop_start()
        with self.cond:
            assert self.cond.wait_for(lambda: self.connack is not None, 5), "no CONNACK"
        assert not self.connack.is_failure, self.connack
        return self

    def __exit__(self, *_: object) -> None:
        self.c.disconnect()
        self.c.loop_stop()

    def publish(self, topic: str, payload: bytes = b"{}", retain: bool = False) -> int:
        """Publish at QoS 1 and return the PUBACK reason code (0 success, 135 not authorized)."""
        info = self.c.publish(topic, payload, qos=1, retain=retain)
        with self.cond:
            assert self.cond.wait_for(lambda: info.mid in self.acks, 5), f"no PUBACK for {topic}"
            return self.acks[info.mid]

    def subscribe(self, *topics: str) -> None:
        self.subscribed.clear()
        self.c.subscribe([(t, 1) for t in topics])
        assert self.subscribed.wait(5)

    def wait_for(self, pred: Any, timeout: float = 10) -> list[mqtt.MQTTMessage]:
        with self.cond:
            ok = self.cond.wait_for(lambda: pred(self.messages), timeout)
            assert ok, f"not received in {timeout}s; got {[(m.topic, m.payload) for m in self.messages]}"
            return list(self.messages)


def on(topic: str) -> Any:
    return lambda ms: [m for m in ms if m.topic == topic]


def broker_conf(root: Path, pki: Path, port: int) -> str:
    """The shipped deploy/mosquitto/examroom.conf pointed at a test PKI, ACL and port, with what
    Debian's main mosquitto.conf adds around conf.d/examroom.conf."""
    conf = (REPO / "deploy/mosquitto/examroom.conf").read_text()
    for old, new in (("/etc/mosquitto/examroom/ca.crt", pki / "ca.crt"),
                     ("/etc/mosquitto/examroom/server.crt", pki / "certs/server.crt"),
                     ("/etc/mosquitto/examroom/server.key", pki / "private/server.key"),
                     ("/etc/mosquitto/examroom/crl.pem", pki / "crl.pem"),
                     ("/etc/mosquitto/examroom/acl", root / "acl"),
                     ("listener 8883", f"listener {port} 127.0.0.1")):
        assert old in conf, old
        conf = conf.replace(old, str(new))
    return conf + f"\npersistence_location {root}/\n{'user root' if os.geteuid() == 0 else ''}\n"
