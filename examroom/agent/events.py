"""The event envelope the aggregator receives, and which kinds are evidence.

Evidence is what a cheating case or an incident report may rest on: it is never
dropped from the spool, whatever the pressure. Telemetry (device state changes,
levels) may be dropped oldest first when the spool is full, and is counted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from examroom.contract.vocabulary import EVIDENCE_KINDS
from examroom.drivers.events import iso_now  # noqa: F401  (re-exported: the agent's envelopes use it)


def is_evidence(kind: str) -> bool:
    return kind in EVIDENCE_KINDS


@dataclass(frozen=True)
class Event:
    """One spooled event. ``live`` is False when it was made while the broker was unreachable.

    ``raw`` is the data as stored (JSON text): the uplink splices it into the envelope
    unparsed, since decoding and re-encoding every event cost more than the rest of
    the send path.
    """

    seq: int
    id: str
    ts: str
    kind: str
    session: int
    raw: str
    live: bool
    size: int = 0

    @property
    def data(self) -> dict[str, Any]:
        return json.loads(self.raw)

    def replayed(self, current_session: int) -> bool:
        return (not self.live) or self.session != current_session

    def payload(self, current_session: int) -> bytes:
        head = json.dumps({"id": self.id, "seq": self.seq, "ts": self.ts, "kind": self.kind,
                           "session": self.session, "replayed": self.replayed(current_session)},
                          ensure_ascii=False, separators=(",", ":"))
        return f'{head[:-1]},"data":{self.raw}}}'.encode()
