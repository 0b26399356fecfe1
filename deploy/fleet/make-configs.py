#!/usr/bin/env python3
"""Render one install bundle per exam room from the fleet CSV.

Why bundles: a room box gets exactly one directory (agent.toml, its own TLS
key and certificate, the CA, its seat plan) and deploy/install.sh copies it to
/etc/examroom unchanged. The config refers to the other files by relative
path, so the bundle is checked here, in place, with the agent's own
``agent.config.parse`` and ``agent.seatplan.load_seatplan``: a mistake is found
at the desk, not on the morning of the exam in room 214.

Bundle layout (OUT/ROOM/): agent.toml, tls/{ca.crt,room.crt,room.key},
seatplan.csv|json, hostname (the box it is for; install.sh checks it).

Room certificates missing from the PKI directory are issued with
deploy/pki/make-pki.sh (idempotent), so adding a room is: a CSV line, a re-run,
a new ACL (deploy/mosquitto/make-acl.py --rooms-csv), a bundle to copy.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from string import Template
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(REPO))  # the agent's own checks, from this checkout

from examroom.agent.config import parse  # noqa: E402
from examroom.agent.errors import ConfigError  # noqa: E402
from examroom.agent.seatplan import load_seatplan  # noqa: E402

COLUMNS = ("room", "label", "seatplan", "hostname")


class FleetError(Exception):
    """A mistake in the fleet inputs; the message says which row and what to do."""


def toml_value(v: Any) -> str:
    """A TOML literal. JSON string escapes are valid TOML except DEL, escaped here."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return str(v)
    return json.dumps(str(v), ensure_ascii=False).replace("\x7f", "\\u007f")


def read_rooms(path: Path) -> list[dict[str, str]]:
    try:
        with path.open(encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in COLUMNS if c not in header]
            if missing:
                raise FleetError(f"{path}: missing column(s) {', '.join(missing)}; "
                                 f"expected a header {','.join(COLUMNS)}")
            rows = []
            for raw in reader:
                row = {(k or "").strip(): (v or "").strip() for k, v in raw.items() if isinstance(v, str)}
                if any(row.values()):
                    row["_line"] = str(reader.line_num)
                    rows.append(row)
    except OSError as e:
        raise FleetError(f"{path}: cannot read: {e.strerror}") from None
    seen: dict[str, str] = {}
    for row in rows:
        for col in ("room", "hostname"):
            first = seen.setdefault(f"{col}={row[col]}", row["_line"])
            if first != row["_line"]:
                raise FleetError(f"{path} line {row['_line']}: {col} {row[col]!r} already on line {first}")
    if not rows:
        raise FleetError(f"{path}: no rooms")
    return rows


def issue_room_cert(pki: Path, site: str, room: str) -> tuple[Path, Path]:
    """The room's certificate and key; make-pki.sh issues them if they are not there yet."""
    cn = f"{site}-{room}"
    cert, key = pki / "certs" / f"{cn}.crt", pki / "private" / f"{cn}.key"
    if not (cert.is_file() and key.is_file()):
        r = subprocess.run(["bash", str(REPO / "deploy/pki/make-pki.sh"), str(pki), "room", site, room],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise FleetError(f"room {room}: could not issue its certificate: {r.stderr.strip()}")
    return cert, key


def render_bundle(row: dict[str, str], args: argparse.Namespace, template: Template,
                  csv_dir: Path) -> Path:
    """Write OUT/ROOM/ and check it exactly as the box will."""
    room = row["room"]
    where = f"{args.csv} line {row['_line']} (room {room})"
    plan_src = (csv_dir / row["seatplan"]).resolve() if row["seatplan"] else None
    if plan_src is None or not plan_src.is_file():
        raise FleetError(f"{where}: seat plan {row['seatplan']!r} not found (relative to {csv_dir})")
    if plan_src.suffix.lower() not in (".csv", ".json"):
        raise FleetError(f"{where}: seat plan must be .csv or .json, got {plan_src.name}")
    plan_name = "seatplan" + plan_src.suffix.lower()
    values = {"site_id": args.site, "site_name": args.site_name, "room_id": room,
              "room_label": row["label"], "broker_host": args.broker_host,
              "broker_port": args.broker_port, "topic_prefix": args.prefix, "seatplan": plan_name}
    try:
        text = template.substitute({k: toml_value(v) for k, v in values.items()})
    except (KeyError, ValueError) as e:
        raise FleetError(f"{args.template}: unknown or broken placeholder {e}; "
                         f"known: {', '.join('${' + k + '}' for k in values)}") from None
    out = args.out / room
    tmp = args.out / f".{room}.new"
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / "tls").mkdir(parents=True)
    os.chmod(tmp, 0o700)  # holds a private key
    cert, key = issue_room_cert(args.pki, args.site, room)
    shutil.copyfile(args.pki / "ca.crt", tmp / "tls" / "ca.crt")
    shutil.copyfile(cert, tmp / "tls" / "room.crt")
    shutil.copyfile(key, tmp / "tls" / "room.key")
    os.chmod(tmp / "tls" / "room.key", 0o600)
    shutil.copyfile(plan_src, tmp / plan_name)
    os.chmod(tmp / plan_name, 0o600)  # names and ID numbers
    (tmp / "hostname").write_text(row["hostname"] + "\n", encoding="utf-8")
    (tmp / "agent.toml").write_text(text, encoding="utf-8")
    try:
        cfg = parse(text, str(tmp / "agent.toml"))
        load_seatplan(tmp / plan_name, cfg.room["id"])
    except ConfigError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FleetError(f"{where}: the rendered bundle does not pass the agent's checks:\n{e}") from None
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="Render and check one install bundle per exam room.")
    p.add_argument("--csv", type=Path, default=HERE / "rooms.example.csv",
                   help="rooms: room,label,seatplan,hostname (seat plan paths relative to the CSV)")
    p.add_argument("--template", type=Path, default=HERE / "agent.toml.template")
    p.add_argument("--pki", type=Path, required=True, help="directory of deploy/pki/make-pki.sh")
    p.add_argument("--site", required=True, help="site id; must match the CA (make-pki.sh init SITE)")
    p.add_argument("--site-name", default="")
    p.add_argument("--broker-host", required=True, help="a name/IP in the broker certificate")
    p.add_argument("--broker-port", type=int, default=8883)
    p.add_argument("--prefix", default="exam", help="MQTT topic prefix")
    p.add_argument("--out", type=Path, required=True, help="bundles are written to OUT/ROOM/")
    args = p.parse_args(argv)
    try:
        if not (args.pki / "ca.crt").is_file():
            raise FleetError(f"{args.pki}: no ca.crt; run deploy/pki/make-pki.sh {args.pki} init "
                             f"{args.site} BROKER_HOST first")
        ca_site = (args.pki / "site").read_text(encoding="utf-8").strip() if (args.pki / "site").is_file() else ""
        if ca_site != args.site:
            raise FleetError(f"{args.pki}: the CA is for site {ca_site!r}, not {args.site!r}")
        try:
            template = Template(args.template.read_text(encoding="utf-8"))
        except OSError as e:
            raise FleetError(f"{args.template}: cannot read: {e.strerror}") from None
        rows = read_rooms(args.csv)
        args.out.mkdir(parents=True, exist_ok=True)
        for row in rows:
            out = render_bundle(row, args, template, args.csv.resolve().parent)
            print(f"make-configs: {out}/ checked: room {row['room']} for host {row['hostname']}")
    except FleetError as e:
        print(f"make-configs: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
