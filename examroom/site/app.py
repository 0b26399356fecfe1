"""The aggregator's parts wired together: store, ingest, durable subscriber, live board.

Each part takes what it needs as constructor arguments; this is the one place that
knows all of them (as ``daemon.py`` is for the room box).
"""
from __future__ import annotations

import logging
import time
from typing import Any

from examroom.contract.schemas import PayloadCheck
from examroom.site.config import SiteConfig
from examroom.site.ingest import Ingest
from examroom.site.store import Store
from examroom.site.subscriber import Subscriber

log = logging.getLogger(__name__)


class SiteApp:
    def __init__(self, cfg: SiteConfig) -> None:
        self.cfg = cfg
        self.store = Store(cfg.store["path"], cfg.store["sync"])
        self.ingest = Ingest(self.store, PayloadCheck(), cfg.prefix, cfg.site["id"],
                             offline_after_s=cfg.offline_after_s,
                             gap_grace_s=cfg.liveness["gap_grace_s"], clock=time.time)
        self.board: Any = None
        self.subscriber = Subscriber(cfg, self.store, self.ingest, on_change=self._changed)

    def _changed(self, rooms: set[str]) -> None:
        if self.board is not None:
            self.board.rooms_changed(rooms)

    def start(self) -> None:
        self.store.open()
        for room in self.cfg.rooms["expected"]:
            with self.store.batch():
                self.store.room(room)
        if self.cfg.board["listen"]:
            from examroom.site.jointtest import start_campaign
            from examroom.site.web import Board

            self.board = Board(self.cfg, self.store,
                               start_jointtest=lambda rooms: start_campaign(self.cfg, self.store, rooms))
            self.board.start()
        self.subscriber.start()

    def stop(self) -> None:
        self.subscriber.stop()
        if self.board is not None:
            self.board.stop()
        self.store.close()
