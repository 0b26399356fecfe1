"""How long the box keeps its evidence: records, trial reports, snapshots and the journal.

Exam evidence is kept until half a year after the results are published (a candidate
may appeal until then); results come about a month after the exam, so the default
keeps a file 213 days after it was written. Older files are deleted, once at start
and once a day after, and the journal forgets sessions that ended that long ago.
Nothing is pruned while it is younger than the setting, whatever the disk says: a
full disk is an alert for a person (``disk_full``), never a reason to lose evidence.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Callable, Iterable

log = logging.getLogger(__name__)

DAY_S = 86400.0


class Retention:
    def __init__(self, keep_days: float, directories: Iterable[str | Path], clock: Callable[[], float],
                 forget_sessions: Callable[[float], int] | None = None) -> None:
        self.keep_days = keep_days
        self._dirs = [Path(d) for d in directories]
        self._clock = clock
        self._forget_sessions = forget_sessions  # the session book's: journal entries of old sessions
        self._next = 0.0

    def due(self) -> bool:
        return self._clock() >= self._next

    def prune(self) -> int:
        """Delete what is past the setting; returns how many files went."""
        now = self._clock()
        self._next = now + DAY_S
        cutoff = now - self.keep_days * DAY_S
        gone = 0
        for directory in self._dirs:
            gone += _prune_dir(directory, cutoff)
        if self._forget_sessions is not None:
            forgotten = self._forget_sessions(cutoff)
            if forgotten:
                log.info("retention: the journal forgot %d session(s) ended over %g days ago", forgotten,
                         self.keep_days)
        if gone:
            log.info("retention: %d file(s) older than %g days deleted", gone, self.keep_days)
        return gone


def _prune_dir(directory: Path, cutoff: float) -> int:
    gone = 0
    try:
        entries = list(os.scandir(directory))
    except FileNotFoundError:
        return 0
    for entry in entries:
        try:
            if entry.is_dir(follow_symlinks=False):
                gone += _prune_dir(Path(entry.path), cutoff)
            elif entry.is_file(follow_symlinks=False) and entry.stat(follow_symlinks=False).st_mtime < cutoff:
                os.unlink(entry.path)
                gone += 1
        except OSError as e:  # one unreadable file must not stop the rest
            log.warning("retention: %s not pruned: %s", entry.path, e)
    return gone
