"""Exports of a real session: the check-in station's own events (a morning exam in room 12)
go through the aggregator's ingest into its store, and ``examroom-site export`` writes them
per session as CSV and JSON, masked, cross-checked against the room's record."""
from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from examroom.contract.schemas import PayloadCheck
from examroom.drivers.events import MetalAlarm, SweepButton
from examroom.site.cli import main
from examroom.site.ingest import Ingest
from examroom.site.store import Store
from tests.checkin_station import FULL_ID, MATH_END, card, kinds
from tests.site_lab import envelope, site_toml


def publish_session(make, clock, emitted) -> None:
    st = make()
    st.on_card(card(1))
    st.sweeps.on_metal_alarm(MetalAlarm("det", active=True))
    st.sweeps.on_sweep_button(SweepButton("det", button="clear"))
    st.on_card(card(2))
    st.on_card(card(2))  # a duplicate tap
    st.book.tick(MATH_END)
    st.book.tick(MATH_END + 5)
    assert kinds(emitted, "session_record")


def ingest_all(db: Path, emitted, skip_kind: str | None = None) -> None:
    store = Store(db)
    store.open()
    ingest = Ingest(store, PayloadCheck(), "exam", "site01", offline_after_s=30, gap_grace_s=60, clock=lambda: 1.0)
    with store.batch():
        for seq, (kind, data) in enumerate(emitted, 1):
            if kind != skip_kind:
                ingest.handle(f"exam/site01/room12/event/{kind}", envelope(seq, kind, data))
    assert ingest.counts["invalid"] == 0  # the station's events are the contract's
    store.close()


def test_export_writes_each_table_masked_with_a_crosscheck_and_a_manifest(make, clock, emitted, tmp_path: Path):
    publish_session(make, clock, emitted)
    cfg = site_toml(tmp_path, 1883)
    ingest_all(tmp_path / "site.db", emitted)
    out = tmp_path / "export"
    assert main(["--config", str(cfg), "export", "--out", str(out)]) == 0
    rows = list(csv.DictReader((out / "math-am/checkin.csv").open(encoding="utf-8")))
    assert [r["verdict"] for r in rows] == ["admitted", "admitted", "duplicate"]
    assert rows[0]["room"] == "room12" and rows[0]["id_masked"].startswith("410105") and "*" in rows[0]["id_masked"]
    assert rows[0]["time"] == "2026-06-07T08:40:00+08:00"  # a person reads it: the exam's zone, with its offset
    sweeps = json.loads((out / "math-am/sweep.json").read_text(encoding="utf-8"))
    assert {s["seat"] for s in sweeps} >= {"1"} and sweeps[0]["room"] == "room12"
    check = json.loads((out / "math-am/crosscheck.json").read_text(encoding="utf-8"))
    assert check["room12"]["ok"] is True and check["room12"]["checkins_held"] == 3
    assert [f["file"] for f in check["room12"]["record_files"]] == ["math-am-12.json", "math-am-12.csv"]
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    for rel, digest in manifest["sha256"].items():
        assert hashlib.sha256((out / rel).read_bytes()).hexdigest() == digest
    for path in out.rglob("*.*"):
        assert not FULL_ID.search(path.read_text(encoding="utf-8")), path


def test_a_record_that_disagrees_with_the_events_held_fails_the_crosscheck(make, clock, emitted, tmp_path: Path,
                                                                           capsys):
    publish_session(make, clock, emitted)
    cfg = site_toml(tmp_path, 1883)
    first_checkin = next(i for i, (k, _) in enumerate(emitted) if k == "checkin")
    del emitted[first_checkin]  # a check-in the site never received
    ingest_all(tmp_path / "site.db", emitted)
    assert main(["--config", str(cfg), "export", "--out", str(tmp_path / "x")]) == 1
    assert "the record counts 3 check-ins, the site holds 2" in capsys.readouterr().out


def test_version_1_events_export_as_version_2_do(make, clock, emitted, tmp_path: Path):
    """A site still holding version-1 events (their times epoch seconds: a box not yet upgraded)
    exports the same tables: what the journal keeps is exactly what version 1 published."""
    publish_session(make, clock, emitted)
    journal = [json.loads(line) for line in (tmp_path / "checkin.journal").read_text(encoding="utf-8").splitlines()]
    v1 = [(e["kind"], e["data"]) for e in journal if not e["kind"].startswith("_")]
    assert [k for k, _ in v1] == [str(k) for k, _ in emitted] and all("v" not in d for _, d in v1)
    assert isinstance(v1[0][1]["time"], float)
    tables = {}
    for name, events in (("v1", v1), ("v2", emitted)):
        (tmp_path / name).mkdir()
        cfg = site_toml(tmp_path / name, 1883)
        ingest_all(tmp_path / name / "site.db", events)  # no version-1 event is flagged invalid
        out = tmp_path / name / "export"
        assert main(["--config", str(cfg), "export", "--out", str(out)]) == 0
        tables[name] = {kind: [{k: v for k, v in row.items() if k != "id"}  # the envelopes' ids differ
                               for row in csv.DictReader((out / f"math-am/{kind}.csv").open(encoding="utf-8"))]
                        for kind in ("checkin", "sweep", "attendance")}
    assert tables["v1"] == tables["v2"]
    assert [r["time"] for r in tables["v1"]["checkin"]] == ["2026-06-07T08:40:00+08:00"] * 3
    assert tables["v1"]["attendance"][0]["cutoff"] == "2026-06-07T09:15:00+08:00"
