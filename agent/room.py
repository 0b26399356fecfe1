"""The room as the aggregator sees it: online or alert, and why.

Alerts are derived every time from the devices and the spool rather than
stored, so the status can never disagree with what the heartbeat shows.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agent.daemon import Agent

log = logging.getLogger(__name__)


class Room:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass

    def tick(self) -> None:
        pass

    def state(self) -> tuple[str, list[str]]:
        alerts = self.agent.devices.needing_attention()
        if self.agent.spool.overfull:
            alerts.append("spool: full of evidence not yet delivered; free space or restore the network")
        return ("alert" if alerts else "online"), alerts

    def exam_state(self) -> dict[str, Any]:
        return {}
