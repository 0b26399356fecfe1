#!/usr/bin/env python3
"""Write the site broker's bridge to the provincial platform (省级平台): a conf.d snippet.

Why generated: what crosses the link is a privacy decision, taken once here and
tested (tests/test_province_bridge.py), not retyped per site. The bridge runs inside
the site's Mosquitto; out of the site it carries, under ``{remote}/{site}/...``:

- every room's ``status`` (retained) and ``heartbeat``,
- only the events that hold no personal data beyond seat numbers (``OUT_EVENTS``),

and nothing else: check-ins, sweeps, suspect confirmations, notes, session records,
replies and commands stay at the site (``WITHHELD``). Into the site it carries the
province's push messages, ``{remote}/{site}/push`` and ``{remote}/all/push``, onto
the rooms' push command ``{prefix}/{site}/broadcast/cmd/push``, bytes unchanged.

TLS always, with the certificate the province issued to this site: there is no
option to leave it out. Mosquitto reads bridges only at start (a reload does not
apply a changed bridge): restart the broker after installing the file.

Usage:
  make-bridge.py --site site01 --province prov-a.example.cn:8883 --province prov-b.example.cn:8883 \\
      --ca /etc/mosquitto/examroom/province/ca.crt --cert /etc/mosquitto/examroom/province/site.crt \\
      --key /etc/mosquitto/examroom/province/site.key -o /etc/mosquitto/conf.d/bridge-province.conf
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import textwrap
from pathlib import Path

TOPIC_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # the rule of examroom/agent/config.py
HOST = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]{0,252}[A-Za-z0-9])?\Z")
CONNECTION = "province"
# Retained, so a site client reading it late still learns the link's state ("1" up, "0" down).
# Under $SYS: outside the rooms' topic tree; make-acl.py lets the aggregator and operators read it
# and nobody write it.
NOTIFICATION_TOPIC = f"$SYS/broker/connection/{CONNECTION}/state"

# Event kinds that leave the site, with why each one may.
OUT_EVENTS: dict[str, str] = {
    "incident": "an audio loss in a listening window: device, session, times",
    "attendance": "counts, and seat numbers only (absent, late_refused, suspects, pending_sweep)",
    "push": "a room showed a pushed instruction: push_id, the pushed text, by site (<topic>)",
    "push_ack": "a person in the room answered it: push_id, a proctor id, the Unix user, seconds taken",
    "selftest": "device test results",
    "forced": "a disruptive action forced through the exam lock, what the province audits: action, "
              "window, by (a staff login or site (<topic>)), reason (free text, scrubbed on the box like "
              "a note: ID numbers masked, seat-plan names blanked; at most 300 characters)",
}
# What stays at the site, and why (written into the generated file, so the reader of
# /etc/mosquitto/conf.d sees the decision next to the rules).
WITHHELD: dict[str, str] = {
    "event/checkin": "ticket number and masked ID number of every candidate at the door",
    "event/sweep": "per-candidate metal-detector record",
    "event/suspect_confirm": "per-candidate identity doubt, proctor signatures",
    "event/note": "free text typed in the room",
    "event/session_record": "one row per seat WITH ticket and masked ID number (seats[], unmatched_checkins[]); "
                            "Mosquitto forwards whole messages and cannot strip fields",
    "event/<any other kind>": "not chosen for the province (snapshot, camera, audio, clock, command ...)",
    "reply/#, cmd/#": "the site's own conversation with its rooms",
}


class BridgeError(Exception):
    """A mistake in the input; the message names it."""


def check_id(what: str, value: str) -> str:
    if not TOPIC_SAFE.match(value):
        raise BridgeError(f'{what} "{value}" must be 1-64 of [A-Za-z0-9_-]')
    return value


def check_prefix(what: str, value: str) -> str:
    """A topic prefix of one or more levels (``province``, ``henan/province``), no wildcards."""
    for level in value.split("/"):
        check_id(f"{what} level", level)
    return value


def check_address(value: str) -> str:
    """HOST:PORT as Mosquitto's ``address`` takes it. IPv6 literals are refused: Mosquitto splits
    on the colon, so give the province's host name (which its server certificate names anyway)."""
    host, sep, port = value.rpartition(":")
    if not sep or not HOST.match(host) or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise BridgeError(f'--province "{value}" must be HOST:PORT (a host name or IPv4 address, port 1-65535)')
    return value


def check_file(what: str, value: str) -> str:
    """An absolute path without white space: Mosquitto runs from /, and ends a value at a space."""
    if not value.startswith("/") or re.search(r"\s", value):
        raise BridgeError(f'{what} "{value}" must be an absolute path without spaces (where the broker reads it)')
    return value


def check_restart(value: str) -> str:
    """``BASE CAP``: reconnect with backoff and jitter from BASE to CAP seconds. The one-value
    (constant) form is refused: Mosquitto 2.0.11 keeps its default 5-30 s backoff with it (seen:
    ``restart_timeout 1`` reconnected after 5 s, ``1 2`` after 1 s)."""
    parts = value.split()
    if len(parts) != 2 or not all(p.isdigit() for p in parts) or not 1 <= int(parts[0]) <= int(parts[1]):
        raise BridgeError(f'--restart-timeout "{value}" must be "BASE CAP" seconds, 1 <= BASE <= CAP')
    return " ".join(parts)


def render(site: str, prefix: str, addresses: list[str], ca: str, cert: str, key: str,
           remote_prefix: str = "province", remote_clientid: str | None = None,
           restart_timeout: str = "5 60") -> str:
    """The conf.d text. Every value is checked: a typo here is a site silently cut off from the
    province, or a topic forwarded that should not be."""
    check_id("site", site)
    if site == "all":
        raise BridgeError('site "all" is reserved: {remote}/all/push is the push to every site')
    check_id("topic prefix", prefix)
    check_prefix("remote prefix", remote_prefix)
    if not addresses:
        raise BridgeError("no --province address given")
    for a in addresses:
        check_address(a)
    if len(set(addresses)) != len(addresses):
        raise BridgeError("an address is given twice")
    ca, cert, key = check_file("--ca", ca), check_file("--cert", cert), check_file("--key", key)
    remote_clientid = check_id("remote client id", remote_clientid or site)
    restart_timeout = check_restart(restart_timeout)
    local, remote = f"{prefix}/{site}/", f"{remote_prefix}/{site}/"
    lines = [
        f"# Generated by deploy/mosquitto/make-bridge.py for site {site}: regenerate rather than edit.",
        "# The site broker's link to the provincial platform (docs/deployment.md, \"Provincial link\").",
        "# Mosquitto reads bridges at start only: `systemctl restart mosquitto` after changing this file.",
        "",
        f"connection {CONNECTION}",
        f"address {' '.join(addresses)}",
        "# The addresses are equal nodes of one provincial cluster: after a failure take the next and stay",
        "# there (false would treat the first as the main one and keep leaving a working node for it).",
        "round_robin true",
        "# MQTT 3.1.1, not 5: the v5 bridge of Mosquitto 2.0.11 sends no session expiry interval, so the",
        "# province ends the site's session at every disconnect and a push sent meanwhile is lost (seen",
        "# in tests/test_province_bridge.py; eclipse/mosquitto#2424, #2980). 3.1.1 keeps the session.",
        "bridge_protocol_version mqttv311",
        "# Fixed ids: the province keeps this site's session (its subscription, pushes not yet delivered)",
        "# under remote_clientid. The dots of local_clientid never occur in a certificate CN, so no client",
        "# of this broker (use_username_as_clientid) can take over the bridge's local session.",
        f"remote_clientid {remote_clientid}",
        f"local_clientid bridge.{CONNECTION}.{site}",
        "# Durable both ways. While the link is down this broker queues what goes out for the bridge as for",
        "# any persistent client, QoS 1 only (heartbeats go at QoS 0, below: dropped while the link is down,",
        "# a stale one being worth nothing, rather than crowding events out of the queue), up to",
        "# max_queued_messages / max_queued_bytes of examroom.conf (100000 messages, 256 MiB: beyond them",
        "# new messages are dropped), kept across a restart by persistence. The province likewise keeps",
        "# the site's session, and pushes published while the site is away (QoS 1).",
        "cleansession false",
        "# A silently dead link (a cut line, no reset) is noticed within about two keepalive intervals;",
        "# what was sent into it unacknowledged goes again. Reconnects back off with jitter, so a province",
        "# coming back is not hit by every site in the same second.",
        "keepalive_interval 30",
        f"restart_timeout {restart_timeout}",
        "start_type automatic",
        "# Tells the province this is a bridge (protocol level | 0x80; Mosquitto logs \"New bridge connected\",",
        "# EMQX knows it too): loop detection, retained flags passed as they are. Should the province's",
        "# broker refuse the connection for it, set it false.",
        "try_private true",
        "# The link's state, retained: 1 up, 0 down. Local only: the province sees its clients itself.",
        "notifications true",
        "notifications_local_only true",
        f"notification_topic {NOTIFICATION_TOPIC}",
        "",
        "# TLS with the certificate the PROVINCE issued to this site (not the site CA's). The key is read",
        "# after Mosquitto drops root: root:mosquitto 0640. The province's host name is checked.",
        f"bridge_cafile {ca}",
        f"bridge_certfile {cert}",
        f"bridge_keyfile {key}",
        "bridge_tls_version tlsv1.2",
        "bridge_insecure false",
        "",
        f"# Out: {local}ROOM/... -> {remote}ROOM/...",
        f"topic +/status out 1 {local} {remote}",
        f"topic +/heartbeat out 0 {local} {remote}",
    ]
    for kind, why in OUT_EVENTS.items():
        lines += textwrap.wrap(f"{kind}: {why}", 100, initial_indent="# ", subsequent_indent="#   ")
        lines += [f"topic +/event/{kind} out 1 {local} {remote}"]
    lines += ["# Never out (personal data stays at the site):"]
    for what, why in WITHHELD.items():
        lines += textwrap.wrap(f"{what}: {why}", 100, initial_indent="#   ", subsequent_indent="#     ")
    lines += [
        "",
        f"# In: the province's pushes -> {local}broadcast/cmd/push (every room of the site). Mosquitto",
        "# applies no ACL to a bridge: this is the only way in, and the province's broker is trusted to",
        "# send only what the bridge subscribed to.",
        f"topic push in 1 {local}broadcast/cmd/ {remote}",
        f"topic push in 1 {local}broadcast/cmd/ {remote_prefix}/all/",
        "",
    ]
    return "\n".join(lines)


def write_atomic(path: Path, text: str) -> None:
    """Replace in one step, 0644 (no secret inside: paths only), so a broker starting mid-write
    never reads half a bridge."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write the site broker's bridge to the provincial platform.")
    p.add_argument("--site", required=True, help="site id (as in [site] id)")
    p.add_argument("--prefix", default="exam", help="the site's topic prefix (as in [mqtt] topic_prefix)")
    p.add_argument("--province", action="append", required=True, metavar="HOST:PORT",
                   help="the provincial broker (repeatable: the nodes of a cluster, used round robin)")
    p.add_argument("--ca", required=True, help="the province's CA certificate (absolute path on the broker)")
    p.add_argument("--cert", required=True, help="this site's certificate issued by the province")
    p.add_argument("--key", required=True, help="its private key (root:mosquitto 0640)")
    p.add_argument("--remote-prefix", default="province",
                   help="topic prefix on the provincial broker: the site publishes under PREFIX/SITE/")
    p.add_argument("--remote-clientid", help="client id at the province (default: the site id)")
    p.add_argument("--restart-timeout", default="5 60", metavar="'BASE CAP'",
                   help="reconnect delay: backoff with jitter from BASE to CAP seconds (default 5 60)")
    p.add_argument("-o", "--output", type=Path, help="file to write (default: standard output)")
    a = p.parse_args(argv)
    try:
        text = render(a.site, a.prefix, a.province, a.ca, a.cert, a.key, a.remote_prefix,
                      a.remote_clientid, a.restart_timeout)
        if a.output is None:
            sys.stdout.write(text)
        else:
            write_atomic(a.output, text)
            print(f"make-bridge: wrote {a.output} (site {a.site}, {len(a.province)} provincial address(es))",
                  file=sys.stderr)
    except BridgeError as e:
        print(f"make-bridge: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
