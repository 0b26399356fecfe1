"""Every MQTT topic of the contract, built and parsed in one place.

A room publishes under ``{prefix}/{site}/{room}/``: ``status`` (retained),
``heartbeat``, ``event/{kind}``, ``reply/{command}``, and listens on
``cmd/{command}`` and on the site's ``{prefix}/{site}/broadcast/cmd/{command}``.
Each level is 1-64 of ``[A-Za-z0-9_-]`` (config checks it), so splitting on
``/`` is exact.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

BROADCAST = "broadcast"  # the pseudo-room a site's commands to every room go to
ID = re.compile(r"[A-Za-z0-9_-]{1,64}")  # a site, room or prefix level


def is_room_id(text: str) -> bool:
    """A room a command may be addressed to: an id, and not the site's broadcast pseudo-room
    (a command to ``broadcast`` reaches every room)."""
    return bool(ID.fullmatch(text)) and text != BROADCAST
CHANNELS = ("status", "heartbeat", "event", "reply", "cmd")  # the level after the room


@dataclass(frozen=True)
class Topic:
    """A parsed topic: ``name`` is the event kind or command for event, reply and cmd."""

    prefix: str
    site: str
    room: str
    channel: str
    name: str | None = None

    @property
    def broadcast(self) -> bool:
        return self.room == BROADCAST

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.room}"


@dataclass(frozen=True)
class Topics:
    """The topics of one room (or, with ``room`` = ``broadcast``, of a site's broadcast)."""

    prefix: str
    site: str
    room: str

    @property
    def base(self) -> str:
        return f"{self.prefix}/{self.site}/{self.room}"

    @property
    def status(self) -> str:
        return f"{self.base}/status"

    @property
    def heartbeat(self) -> str:
        return f"{self.base}/heartbeat"

    def event(self, kind: str) -> str:
        return f"{self.base}/event/{kind}"

    def reply(self, command: str) -> str:
        return f"{self.base}/reply/{command}"

    def cmd(self, command: str) -> str:
        return f"{self.base}/cmd/{command}"

    def suffix(self, rest: str) -> str:
        """A topic of this room from what follows the room level (``"status"``, ``"event/note"``)."""
        return f"{self.base}/{rest}"

    @property
    def commands(self) -> str:
        """The filter a room subscribes to for commands addressed to it."""
        return f"{self.base}/cmd/+"

    @property
    def reply_tree(self) -> str:
        """The prefix every reply of this room must start with."""
        return f"{self.base}/reply/"

    @property
    def site_broadcast(self) -> "Topics":
        return Topics(self.prefix, self.site, BROADCAST)

    @staticmethod
    def site_filter(prefix: str, site: str) -> str:
        """Everything of one site: what the aggregator subscribes to."""
        return f"{prefix}/{site}/#"

    @staticmethod
    def all_filter(prefix: str) -> str:
        """Every room of every site under the prefix: what ``watch`` subscribes to."""
        return f"{prefix}/#"

    @staticmethod
    def parse(topic: str) -> Topic | None:
        """The parts of a contract topic, or None for anything else (a bridge's own topics)."""
        parts = topic.split("/")
        if len(parts) < 4 or parts[3] not in CHANNELS:
            return None
        prefix, site, room, channel, *rest = parts
        if channel in ("status", "heartbeat"):
            return Topic(prefix, site, room, channel) if not rest else None
        if len(rest) != 1 or not rest[0]:
            return None
        return Topic(prefix, site, room, channel, rest[0])
