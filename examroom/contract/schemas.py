"""The contract's JSON Schemas, shipped with the package so the aggregator checks every
payload against exactly what the docs publish.

The docs are the source (fenced ```json schema:NAME in docs/mqtt.md,
events-checkin.md, events-devices.md); ``schemas.json`` beside this module is
their bundle, rebuilt with ``python -m examroom.contract.schemas`` from a
checkout, and a test holds the two equal. NAME is ``status``, ``heartbeat``,
``event``, ``reply``, ``data/<kind>`` for an event's data and ``device/<kind>``
for a heartbeat's device entry.
"""
from __future__ import annotations

import json
import re
import sys
from datetime import timezone
from functools import cache
from pathlib import Path
from typing import Any

from examroom.contract.times import TIMES, to_wire, version

BUNDLE = Path(__file__).with_name("schemas.json")
PAGES = ("mqtt.md", "events-checkin.md", "events-devices.md")
_FENCE = re.compile(r"^```json schema:(\S+)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)


def from_docs(docs: Path) -> dict[str, Any]:
    """Every schema of the contract pages by NAME, in page order."""
    out: dict[str, Any] = {}
    for page in PAGES:
        for m in _FENCE.finditer((docs / page).read_text(encoding="utf-8")):
            out[m.group(1)] = json.loads(m.group(2))
    return out


@cache
def bundled() -> dict[str, Any]:
    return json.loads(BUNDLE.read_text(encoding="utf-8"))


class PayloadCheck:
    """Validates a payload of the contract; returns the problems in words (empty: valid).

    The validator is jsonschema-rs (Draft 2020-12, formats checked), the site side's
    dependency: the room box never imports this. The pure-Python ``jsonschema`` cost 0.85 ms
    a heartbeat (six device schemas), 90 % of a core for 1,000 rooms; this costs 3 µs. The
    tests check the docs' payloads with ``jsonschema`` all the same: two implementations
    that must agree.
    """

    def __init__(self, schemas: dict[str, Any] | None = None) -> None:
        import jsonschema_rs

        schemas = bundled() if schemas is None else schemas
        self._v = {name: jsonschema_rs.validator_for(s, validate_formats=True) for name, s in schemas.items()}

    def _errors(self, name: str, payload: Any, where: str = "") -> list[str]:
        v = self._v.get(name)
        if v is None:
            return []
        return [f"{where}{'/'.join(str(p) for p in e.instance_path) or '(top)'}: {e.message}"[:300]
                for e in v.iter_errors(payload)]

    def status(self, payload: Any) -> list[str]:
        return self._errors("status", payload)

    def heartbeat(self, payload: Any) -> list[str]:
        problems = self._errors("heartbeat", payload)
        devices = payload.get("devices") if isinstance(payload, dict) else None
        if isinstance(devices, dict):
            for name, entry in devices.items():
                if isinstance(entry, dict):
                    problems += self._errors(f"device/{entry.get('kind')}", entry, f"devices/{name}/")
        return problems

    def event(self, kind: str, payload: Any) -> list[str]:
        problems = self._errors("event", payload)
        if isinstance(payload, dict):
            if payload.get("kind") != kind:
                problems.append(f"kind: {payload.get('kind')!r} differs from the topic's {kind!r}")
            if f"data/{kind}" not in self._v:
                problems.append(f"kind: {kind!r} is not a kind of the contract")
            else:
                problems += self._errors(f"data/{kind}", _current(kind, payload.get("data")), "data/")
        return problems

    def reply(self, payload: Any) -> list[str]:
        return self._errors("reply", payload)


def _current(kind: str, data: Any) -> Any:
    """Data of contract version 1 (no ``v``: its times epoch seconds) read as version 2, which
    the schemas describe: a box not yet upgraded, or a spool filled before the upgrade, sends
    valid events, not ones to flag. The stored event stays as it came."""
    if isinstance(data, dict) and kind in TIMES and version(data) == 1:
        return to_wire(kind, data, timezone.utc)
    return data


def main() -> int:
    """Rebuild the bundle from a checkout's docs/."""
    docs = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parents[2] / "docs"
    BUNDLE.write_text(json.dumps(from_docs(docs), ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {BUNDLE} from {docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
