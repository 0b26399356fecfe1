"""The durable spool: ordered, acked, bounded (telemetry dropped, evidence never), crash-safe."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from examroom.agent.events import is_evidence
from examroom.agent.spool import Spool, SpoolClosed

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def spool_path(tmp_path: Path) -> Path:
    return tmp_path / "spool" / "spool.db"


def opened(path: Path, **kw) -> Spool:
    s = Spool(path, **kw)
    s.open()
    return s


@pytest.fixture
def spool(spool_path: Path):
    s = opened(spool_path)
    yield s
    s.close()


def size_of(kind: str, data: dict) -> int:
    """The spool's own size accounting for one event (body + kind + envelope)."""
    return len(json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode()) + len(kind) + 120


# -- order, batches, ack --------------------------------------------------------------

def test_append_returns_increasing_seq_and_event(spool: Spool) -> None:
    events = [spool.append("note", {"text": f"n{i}", "中": "文"}, session=3, live=i % 2 == 0)
              for i in range(5)]
    seqs = [e.seq for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == 5
    e = events[0]
    assert e.kind == "note" and e.session == 3 and e.live is True and e.data["中"] == "文"
    assert e.size == size_of("note", e.data)
    assert len({x.id for x in events}) == 5


def test_read_batch_in_seq_order_with_after_and_limit(spool: Spool) -> None:
    seqs = [spool.append("device" if i % 2 else "note", {"i": i}, 1, True).seq for i in range(10)]
    batch = spool.read_batch()
    assert [e.seq for e in batch] == seqs
    assert [e.data["i"] for e in batch] == list(range(10))
    assert [e.seq for e in spool.read_batch(limit=3)] == seqs[:3]
    assert [e.seq for e in spool.read_batch(after_seq=seqs[3], limit=4)] == seqs[4:8]
    assert spool.read_batch(after_seq=seqs[-1]) == []
    # read does not consume
    assert len(spool.read_batch()) == 10
    # what comes back is what went in
    again = spool.read_batch(limit=1)[0]
    assert again == batch[0]


def test_ack_deletes_only_given_seqs(spool: Spool) -> None:
    seqs = [spool.append("note", {"i": i}, 1, True).seq for i in range(6)]
    assert spool.ack([seqs[1], seqs[3]]) == 2
    assert [e.seq for e in spool.read_batch()] == [seqs[0], seqs[2], seqs[4], seqs[5]]
    assert spool.ack([seqs[1], 99999]) == 0      # already gone / never existed: nothing else touched
    assert spool.ack([]) == 0
    assert spool.depth()["events"] == 4
    assert spool.ack(seqs) == 4
    assert spool.read_batch() == []
    assert spool.depth()["events"] == 0 and spool.depth()["bytes"] == 0


def test_ack_many_in_chunks(spool: Spool) -> None:
    seqs = [spool.append("device", {"i": i}, 1, True).seq for i in range(1200)]
    assert spool.ack(seqs[:1100]) == 1100
    assert [e.seq for e in spool.read_batch(limit=1000)] == seqs[1100:]


def test_seq_never_reused_after_ack_and_reopen(spool_path: Path) -> None:
    s = opened(spool_path)
    seqs = [s.append("note", {"i": i}, 1, True).seq for i in range(3)]
    s.ack(seqs)  # table empty now
    after_ack = s.append("note", {}, 1, True).seq
    assert after_ack > seqs[-1]
    s.ack([after_ack])
    s.close()
    s = opened(spool_path)
    try:
        after_reopen = s.append("note", {}, 1, True).seq
        assert after_reopen > after_ack
    finally:
        s.close()


def test_next_session_increases_and_persists(spool_path: Path) -> None:
    s = opened(spool_path)
    assert s.last_session() == 0
    assert [s.next_session() for _ in range(3)] == [1, 2, 3]
    assert s.last_session() == 3
    s.close()
    s = opened(spool_path)
    try:
        assert s.last_session() == 3
        assert s.next_session() == 4
    finally:
        s.close()


def test_meta_roundtrip_and_closed(spool_path: Path) -> None:
    s = opened(spool_path)
    s.set_meta("k", "v")
    assert s.get_meta("k") == "v" and s.get_meta("absent", "d") == "d"
    s.close()
    s.close()  # idempotent
    with pytest.raises(SpoolClosed):
        s.append("note", {}, 1, True)


# -- depth ----------------------------------------------------------------------------------

def test_depth_counts_bytes_and_oldest_age(spool: Spool) -> None:
    assert spool.depth() == {"events": 0, "bytes": 0, "oldest_age_s": 0.0,
                             "overfull": False, "dropped": {}, "disk_full": False, "unstored": 0}
    a = spool.append("note", {"t": "old"}, 1, True, now=time.time() - 100)
    b = spool.append("device", {"rms": -20}, 1, True)
    d = spool.depth()
    assert d["events"] == 2
    assert d["bytes"] == a.size + b.size
    assert 100 <= d["oldest_age_s"] < 160
    spool.ack([a.seq])
    d = spool.depth()
    assert d["events"] == 1 and d["bytes"] == b.size
    assert d["oldest_age_s"] < 60


def test_depth_survives_reopen(spool_path: Path) -> None:
    s = opened(spool_path)
    total = sum(s.append("note", {"i": i}, 1, True).size for i in range(4))
    s.close()
    s = opened(spool_path)
    try:
        d = s.depth()
        assert d["events"] == 4 and d["bytes"] == total
    finally:
        s.close()


# -- the bound ----------------------------------------------------------------------------------

def test_full_spool_drops_telemetry_oldest_first(spool_path: Path) -> None:
    one = size_of("device", {"i": 0})
    s = opened(spool_path, max_bytes=one * 5)
    try:
        seqs = [s.append("device", {"i": i}, 1, True).seq for i in range(5)]
        assert s.depth()["bytes"] == one * 5
        # two more: the two oldest go
        for i in (5, 6):
            assert s.append("device", {"i": i}, 1, True) is not None
        kept = s.read_batch()
        assert [e.data["i"] for e in kept] == [2, 3, 4, 5, 6]
        assert kept[0].seq == seqs[2]
        d = s.depth()
        assert d["dropped"] == {"device": 2}
        assert d["overfull"] is False
        assert d["bytes"] <= s.max_bytes
    finally:
        s.close()


def test_evidence_evicts_telemetry_then_overflows_never_dropped(spool_path: Path) -> None:
    assert is_evidence("note") and is_evidence("checkin") and not is_evidence("device")
    tele = size_of("device", {"i": 0})
    s = opened(spool_path, max_bytes=tele * 4)
    try:
        for i in range(4):
            s.append("device", {"i": i}, 1, True)
        notes = []
        for i in range(8):
            kind = "note" if i % 2 else "checkin"
            ev = s.append(kind, {"i": i}, 1, True)
            assert ev is not None  # evidence is always stored
            notes.append(ev.seq)
        d = s.depth()
        kinds = [e.kind for e in s.read_batch()]
        assert "device" not in kinds                  # all telemetry made way
        assert [e.seq for e in s.read_batch()] == notes  # every piece of evidence kept
        assert d["dropped"] == {"device": 4}
        assert d["overfull"] is True
        assert d["bytes"] > s.max_bytes
        # telemetry is refused (and counted) while evidence fills the spool
        assert s.append("device", {"i": 99}, 1, True) is None
        assert s.depth()["dropped"] == {"device": 5}
        assert [e.seq for e in s.read_batch()] == notes
        # nothing evidence-like is ever counted as dropped
        assert set(s.depth()["dropped"]) == {"device"}
    finally:
        s.close()


def test_drops_and_refusals_reach_on_drop_and_overfull_is_logged(spool_path: Path, caplog) -> None:
    """The metric of dropped events is fed from here: evictions count as much as refusals."""
    tele = size_of("device", {"i": 0})
    told: list[str] = []
    s = Spool(spool_path, max_bytes=tele * 2, on_drop=told.append)
    s.open()
    try:
        for i in range(3):
            s.append("device", {"i": i}, 1, True)  # the third evicts the first
        assert told == ["device"]
        with caplog.at_level("ERROR", logger="examroom.agent.spool"):
            for i in range(3):
                s.append("note", {"i": i}, 1, True)  # evidence: evicts the rest, then overflows
            assert s.append("device", {"i": 9}, 1, True) is None  # refused
        assert told == ["device"] * 4
        assert [r.message for r in caplog.records if "full of undelivered evidence" in r.message][:1]
        assert len([r for r in caplog.records if "full of undelivered" in r.message]) == 1  # once
    finally:
        s.close()


def test_bound_counts_bytes_not_characters(spool_path: Path) -> None:
    """A note in Chinese is three bytes a character on disk and on the wire."""
    s = opened(spool_path)
    try:
        ascii_ev = s.append("note", {"text": "a" * 30}, 1, True)
        han_ev = s.append("note", {"text": "钟" * 30}, 1, True)
        assert han_ev.size - ascii_ev.size == 60
    finally:
        s.close()


def test_overfull_cleared_after_ack_frees_space(spool_path: Path) -> None:
    one = size_of("note", {"i": 0})
    s = opened(spool_path, max_bytes=one * 3)
    try:
        seqs = [s.append("note", {"i": i}, 1, True).seq for i in range(5)]
        assert s.depth()["overfull"] is True
        s.ack(seqs[:1])  # still above the bound
        assert s.depth()["overfull"] is True
        s.ack(seqs[1:2])  # now exactly at the bound
        assert s.depth()["overfull"] is False
        assert [e.data["i"] for e in s.read_batch()] == [2, 3, 4]
    finally:
        s.close()


def test_overfull_still_reported_after_reopen(spool_path: Path) -> None:
    one = size_of("note", {"i": 0})
    s = opened(spool_path, max_bytes=one * 2)
    for i in range(4):
        s.append("note", {"i": i}, 1, True)
    assert s.depth()["overfull"] is True
    s.close()
    s = opened(spool_path, max_bytes=one * 2)  # the agent restarted: the alert must not vanish
    try:
        assert s.depth()["overfull"] is True
        assert s.depth()["events"] == 4
    finally:
        s.close()


# -- durability -------------------------------------------------------------------------------------

WRITER = r"""
import sys
from examroom.agent.spool import Spool
s = Spool(sys.argv[1])
s.open()
for i in range(int(sys.argv[2])):
    ev = s.append("note" if i % 3 else "device", {"i": i, "pad": "x" * 200}, 1, False)
    print(ev.seq, flush=True)
"""


def test_sigkilled_writer_loses_nothing_acknowledged(spool_path: Path) -> None:
    n_total, kill_after = 100000, 200
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(spool_path), str(n_total)],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    printed: list[int] = []
    try:
        for line in proc.stdout:
            printed.append(int(line))
            if len(printed) == kill_after:
                proc.send_signal(signal.SIGKILL)
                break
        # the writer may have printed more between our read and the kill
        rest = proc.stdout.read()
        printed += [int(x) for x in rest.split()]
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    assert kill_after <= len(printed) < n_total  # killed mid-way
    s = opened(spool_path)
    try:
        stored = {e.seq for e in s.read_batch(limit=n_total)}
        missing = set(printed) - stored
        assert not missing, f"lost {len(missing)} events whose append had returned"
        assert s.depth()["events"] == len(stored)
        # and the spool goes on numbering after the crash
        assert s.append("note", {}, 2, True).seq > max(stored)
    finally:
        s.close()


def test_wal_mode_and_sync(spool_path: Path) -> None:
    s = opened(spool_path)
    s.append("note", {}, 1, True)
    try:
        db = s._conn()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    finally:
        s.close()
    # WAL is persistent in the file: another connection sees it too
    with sqlite3.connect(spool_path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    s = opened(spool_path, sync="normal")
    try:
        assert s._conn().execute("PRAGMA synchronous").fetchone()[0] == 1
    finally:
        s.close()


def test_files_are_owner_only(spool_path: Path) -> None:
    old = os.umask(0o022)  # a typical service umask
    try:
        s = opened(spool_path)
    finally:
        os.umask(old)
    try:
        s.append("note", {"text": "evidence"}, 1, True)
        for p in (spool_path, Path(f"{spool_path}-wal"), Path(f"{spool_path}-shm")):
            assert p.exists(), p
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, (p, oct(p.stat().st_mode))
    finally:
        s.close()


def test_existing_loose_files_tightened_on_open(spool_path: Path) -> None:
    s = opened(spool_path)
    s.append("note", {}, 1, True)
    s.close()
    os.chmod(spool_path, 0o644)
    s = opened(spool_path)
    try:
        assert stat.S_IMODE(spool_path.stat().st_mode) == 0o600
    finally:
        s.close()


def test_a_failed_write_does_not_wedge_the_spool(spool_path: Path) -> None:
    """A delete that fails (a full disk; here a trigger) rolls back: later events still commit."""
    s = Spool(spool_path)
    s.open()
    kept = s.append("note", {"i": 1}, 1, True)
    s._conn().execute("CREATE TRIGGER no_delete BEFORE DELETE ON events "
                      "BEGIN SELECT RAISE(ABORT, 'disk full'); END")
    with pytest.raises(sqlite3.DatabaseError, match="disk full"):
        s.ack([kept.seq])
    assert s.depth()["events"] == 1
    after = s.append("note", {"i": 2}, 1, True)  # would raise "within a transaction" if wedged
    assert after is not None and after.seq > kept.seq
    assert s._conn().execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL restored after the ack
    s._conn().execute("DROP TRIGGER no_delete")
    assert s.ack([kept.seq, after.seq]) == 2
    s.close()
