"""The site aggregator's TOML configuration (``site.toml``), checked whole like the agent's:
every problem is reported with the file, the key and what was expected, before anything
starts. The MQTT keys mean what they mean in the agent's config and are checked by the
same options.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from examroom.agent.config import SCHEMA as AGENT_SCHEMA
from examroom.agent.config import check_table, check_tls, time_zone
from examroom.agent.errors import ConfigError, Problem
from examroom.drivers.base import Option


_MQTT_KEYS = ("host", "port", "topic_prefix", "keepalive_s", "username", "password",
              "tls_ca", "tls_cert", "tls_key")
SCHEMA: dict[str, dict[str, Option]] = {
    "site": {
        "id": AGENT_SCHEMA["site"]["id"],
        "name": AGENT_SCHEMA["site"]["name"],
        "timezone": Option(str, default="Asia/Shanghai", check=time_zone,
                           expected="an IANA time zone such as Asia/Shanghai",
                           help="every time a person reads (board, reports) is in this zone"),
    },
    "mqtt": {k: AGENT_SCHEMA["mqtt"][k] for k in _MQTT_KEYS} | {
        "client_id": Option(str, default="", help='the durable session\'s id; default "examroom-site-{site.id}"'),
        "session_expiry_s": Option(int, default=7 * 24 * 3600, check=lambda v: v >= 60,
                                   expected=">= 60 seconds",
                                   help="how long the broker keeps the aggregator's queue while it is down"),
    },
    "store": {
        "path": Option(str, default="/var/lib/examroom-site/site.db", path=True),
        "sync": AGENT_SCHEMA["spool"]["sync"],
    },
    "liveness": {
        "heartbeat_s": Option((int, float), default=10, check=lambda v: 0.1 <= v <= 3600,
                              expected="0.1-3600 seconds (the rooms' heartbeat.interval_s)"),
        "missed": Option(int, default=3, check=lambda v: 1 <= v <= 100, expected="1-100 heartbeats",
                         help="a room is offline after this many heartbeats missed"),
        "gap_grace_s": Option((int, float), default=60, check=lambda v: v >= 0, expected=">= 0 seconds",
                              help="how long a seq gap may wait for the room's drop counter"),
    },
    "board": {
        "listen": Option(str, default="127.0.0.1:8080", check=AGENT_SCHEMA["metrics"]["listen"].check,
                         expected='"host:port" or "" for no board'),
    },
    "rooms": {
        "expected": Option(list, default=[], check=lambda v: all(isinstance(x, str) for x in v),
                           expected="a list of room ids",
                           help="rooms shown (as never seen) before they first connect"),
    },
}


@dataclass(frozen=True)
class SiteConfig:
    file: str
    site: dict[str, Any]
    mqtt: dict[str, Any]
    store: dict[str, Any]
    liveness: dict[str, Any]
    board: dict[str, Any]
    rooms: dict[str, Any]

    @property
    def prefix(self) -> str:
        return self.mqtt["topic_prefix"]

    @property
    def client_id(self) -> str:
        return self.mqtt["client_id"] or f"examroom-site-{self.site['id']}"

    @property
    def offline_after_s(self) -> float:
        return self.liveness["heartbeat_s"] * self.liveness["missed"] + 1.0


def parse(text: str, file: str) -> SiteConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([Problem(file, "(syntax)", f"not valid TOML: {e}")]) from None
    problems: list[Problem] = []
    base_dir = Path(file).resolve().parent
    for key in raw:
        if key not in SCHEMA:
            problems.append(Problem(file, key, f"unknown table (known: {', '.join(sorted(SCHEMA))})"))
    tables = {name: check_table(raw.get(name, {}), schema, file, name, base_dir, problems)
              for name, schema in SCHEMA.items()}
    mq = tables["mqtt"]
    if mq.get("tls_cert") and not mq.get("tls_key"):
        problems.append(Problem(file, "mqtt.tls_key", "missing; expected the private key of tls_cert"))
    elif not problems:
        problems += check_tls(mq, file)
    if problems:
        raise ConfigError(problems)
    # the agent's uplink options the site's client shares (make_client reads them)
    mq.setdefault("inflight", 100)
    return SiteConfig(file=file, **tables)


def load(path: str | Path) -> SiteConfig:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([Problem(str(p), "(file)", f"cannot read: {e.strerror or e}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(str(p), "(file)", "not UTF-8 text")]) from None
    return parse(text, str(p))
