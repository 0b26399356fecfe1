#!/usr/bin/env python3
"""Write the site broker's ACL file from the rooms list.

Why generated: one hand-written line per room and topic is where a typo lets
room 101 publish as room 102. The ACL users are certificate CNs (the broker
runs with use_identity_as_username): rooms are ``SITE-ROOM`` as issued by
deploy/pki/make-pki.sh, clients such as the aggregator are their NAME.

Three roles (the matrix is in docs/deployment.md, "Who may do what"):

- a room may write only its own status, heartbeat, event/# and reply/# topics
  (not its cmd/#: a room must not command itself or look like the site) and
  read its own cmd/# and the site's broadcast/cmd/#;
- an aggregator (``--aggregator``) reads the whole site and may send only the
  commands that change nothing in a room: ping, status, selftest (a remote
  self-test only reads; the room forces ``act`` off), exam_lock (its state),
  time_check (the site's time; the room answers its clock's offset);
- an operator (``--operator``) reads the whole site and may also send the
  commands that act in a room or add to its record: note, snapshot,
  audio_switch, trial_listening, push (an instruction shown in the room),
  seatplan_expect (the seat plan's SHA-256: a mismatch shuts the room's entry).

Commands are listed one by one, not as cmd/#: a command added to the agent
reaches no room until it is put in one of the two lists here. Nobody may
write another site, $SYS, or a room's status/event topics except the room.

The broker cannot refuse a *retained* publish on cmd/ (Mosquitto's ACL file
has no retain rule); the room refuses retained commands itself.

The provincial bridge (make-bridge.py) runs inside the broker, and Mosquitto
applies no ACL to a bridge (seen with 2.0.11; in its source the default ACL
check allows any bridge context): the province's pushes reach broadcast/cmd/push with no rule for the
bridge (tests/test_province_bridge.py, where no user may write that topic).
Its link state, the retained $SYS/broker/connection/+/state, is an ordinary
read right of the aggregator and operators (a $SYS topic is matched only by
an ACL line that starts with $; rooms are not given it).

Usage:
  make-acl.py --site site01 --rooms-csv deploy/fleet/rooms.csv -o acl
  make-acl.py --site site01 --room room101 --room room102 --aggregator aggregator --operator ops
"""
from __future__ import annotations

import argparse
import csv
import grp
import os
import re
import sys
import tempfile
from pathlib import Path

TOPIC_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # the rule of examroom/agent/config.py
ROOM_WRITES = ("status", "heartbeat", "event/#", "reply/#")
# every command a room accepts over MQTT (examroom/agent/commands.py REMOTE), by what it may do
READ_ONLY_COMMANDS = ("ping", "status", "selftest", "exam_lock", "time_check")
DISRUPTIVE_COMMANDS = ("note", "snapshot", "audio_switch", "trial_listening", "push", "seatplan_expect")
# The provincial bridge's link state (deploy/mosquitto/make-bridge.py): the broker publishes it
# itself, so no one needs to write it, but reading it is an ACL right like any other.
BRIDGE_STATE = "$SYS/broker/connection/+/state"
ACL_MODE = 0o640  # the broker reads it as group mosquitto; nobody else needs to see who may do what


class AclError(Exception):
    """A mistake in the input; the message names it."""


def check_id(what: str, value: str) -> str:
    if not TOPIC_SAFE.match(value):
        raise AclError(f'{what} "{value}" must be 1-64 of [A-Za-z0-9_-]')
    return value


def rooms_from_csv(path: Path) -> list[str]:
    """Room ids from the fleet CSV (column ``room``), the same file make-configs.py reads."""
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or "room" not in [h.strip() for h in reader.fieldnames]:
                raise AclError(f"{path}: expected a header row with a 'room' column")
            return [(row.get("room") or "").strip() for row in reader
                    if any((v or "").strip() for v in row.values() if isinstance(v, str))]
    except OSError as e:
        raise AclError(f"{path}: cannot read: {e.strerror}") from None


def render(site: str, prefix: str, rooms: list[str], aggregators: list[str],
           operators: list[str] | None = None) -> str:
    """The ACL text. Checks every id and refuses duplicates, which would be two boxes as one room
    or one certificate with two roles."""
    operators = operators or []
    check_id("site", site)
    check_id("topic prefix", prefix)
    if not rooms:
        raise AclError("no rooms given")
    seen: set[str] = set()
    for room in rooms:
        check_id("room", room)
        if room == "broadcast":
            raise AclError('room "broadcast" is reserved for site-wide commands')
        if room in seen:
            raise AclError(f'room "{room}" is listed twice')
        seen.add(room)
    users = {f"{site}-{r}" for r in rooms}
    roles: dict[str, str] = {}
    for role, names in (("aggregator", aggregators), ("operator", operators)):
        for c in names:
            check_id(role, c)
            if c in users:
                raise AclError(f'{role} "{c}" has the name of a room user')
            if c in roles:
                raise AclError(f'"{c}" is given twice (as {roles[c]} and {role}): one certificate, one role')
            roles[c] = role
    site_topic = f"{prefix}/{site}"
    lines = [f"# Generated by deploy/mosquitto/make-acl.py for site {site}: edit the rooms list",
             "# and regenerate rather than editing by hand. Users are certificate CNs.",
             "# Retained publishes on cmd/ cannot be refused here; rooms refuse retained commands.", ""]
    for c in aggregators:
        lines += ["# aggregator: reads the whole site and the provincial link's state; only commands that",
                  "# change nothing in a room",
                  f"user {c}", f"topic read {site_topic}/#", f"topic read {BRIDGE_STATE}"]
        lines += [f"topic write {site_topic}/+/cmd/{cmd}" for cmd in READ_ONLY_COMMANDS]
        lines += [""]
    for c in operators:
        lines += ["# operator: reads the whole site and the provincial link's state; every command a room",
                  "# accepts over MQTT",
                  f"user {c}", f"topic read {site_topic}/#", f"topic read {BRIDGE_STATE}"]
        lines += [f"topic write {site_topic}/+/cmd/{cmd}" for cmd in READ_ONLY_COMMANDS + DISRUPTIVE_COMMANDS]
        lines += [""]
    for r in rooms:
        base = f"{site_topic}/{r}"
        lines += [f"user {site}-{r}"]
        lines += [f"topic write {base}/{t}" for t in ROOM_WRITES]
        lines += [f"topic read {base}/cmd/#", f"topic read {site_topic}/broadcast/cmd/#", ""]
    return "\n".join(lines)


def write_atomic(path: Path, text: str, group: str | None = None) -> None:
    """Replace in one step: a broker reloading mid-write must not see half an ACL. Mode 0640;
    the group is ``group``, else that of the file replaced (root:mosquitto stays so: a new
    file the broker cannot read would fail its next reload)."""
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise AclError(f'no group "{group}" on this machine') from None
    elif path.exists():
        gid = path.stat().st_gid
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, ACL_MODE)
        if gid != -1 and gid != os.stat(tmp).st_gid:
            try:
                os.chown(tmp, -1, gid)
            except PermissionError:
                raise AclError(f"{path}: cannot give the new file group id {gid} (run as root, "
                               "or as a member of that group)") from None
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Write the exam site broker's ACL file.")
    p.add_argument("--site", required=True, help="site id (as in [site] id)")
    p.add_argument("--prefix", default="exam", help="topic prefix (as in [mqtt] topic_prefix)")
    p.add_argument("--room", action="append", default=[], help="a room id (repeatable)")
    p.add_argument("--rooms-csv", type=Path, help="the fleet CSV (deploy/fleet/rooms.example.csv)")
    p.add_argument("--aggregator", action="append", default=None,
                   help="client certificate CN that reads the site and may send only ping, status, "
                        "selftest, exam_lock, time_check (repeatable; default aggregator unless --operator "
                        "is given)")
    p.add_argument("--operator", action="append", default=[],
                   help="client certificate CN that reads the site and may send every remote command, "
                        "note, snapshot, audio_switch, trial_listening, push, seatplan_expect included "
                        "(repeatable)")
    p.add_argument("-o", "--output", type=Path, help="file to write, mode 0640 (default: standard output)")
    p.add_argument("--group", help="group of the written file (e.g. mosquitto; default: that of the "
                                   "file it replaces)")
    a = p.parse_args(argv)
    try:
        rooms = list(a.room) + (rooms_from_csv(a.rooms_csv) if a.rooms_csv else [])
        aggregators = a.aggregator if a.aggregator is not None else ([] if a.operator else ["aggregator"])
        text = render(a.site, a.prefix, rooms, aggregators, a.operator)
        if a.output is None:
            sys.stdout.write(text)
        else:
            write_atomic(a.output, text, a.group)
            print(f"make-acl: wrote {a.output} ({len(rooms)} rooms, {len(aggregators)} aggregator(s), "
                  f"{len(a.operator)} operator(s))", file=sys.stderr)
    except AclError as e:
        print(f"make-acl: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
