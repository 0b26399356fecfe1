"""Online or alert, and why: a plain function of the states the agent already holds.

Alerts are derived every time rather than stored, so the retained status can
never disagree with what the heartbeat shows.
"""
from __future__ import annotations

from typing import Iterable, Mapping

from examroom.contract.vocabulary import RoomState


def room_state(device_alerts: Iterable[str], exam_alerts: Iterable[str], loop_errors: Mapping[str, str],
               rejected: int, spool_overfull: bool, disk_full: bool = False,
               unstored: int = 0) -> tuple[RoomState, list[str]]:
    alerts = [*device_alerts, *exam_alerts]
    alerts += [f"agent: {what} failing: {error}" for what, error in loop_errors.items()]
    if rejected:
        alerts.append(f"broker: refused {rejected} event(s) (ACL or size); they stay in the spool")
    if disk_full:
        alerts.append(f"disk_full: the spool's disk is full; {unstored} event(s) could not be stored "
                      "(delivery of the spooled ones goes on); free space on the box")
    if spool_overfull:
        alerts.append("spool: full of evidence not yet delivered; free space or restore the network")
    return (RoomState.ALERT if alerts else RoomState.ONLINE), alerts
