"""Times a person reads are in the exam's zone, whatever the box's zone is (issue 12.9): a box
on UTC printed 01:00:00 where the wall clock and the record said 09:00:00."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from examroom.agent import human_time
from examroom.agent.cli_verdicts import checkin_text

NINE_AM_BEIJING = 1_780_794_000.0  # 2026-06-07T09:00:00+08:00 (01:00 UTC)


def test_the_cli_prints_exam_time_not_the_machines(monkeypatch):
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        human_time.use_zone("Asia/Shanghai")
        text, _ = checkin_text({"verdict": "admitted", "seat": "3", "ticket": "1", "id_masked": "x",
                                "time": NINE_AM_BEIJING, "device": "idreader"})
        assert "09:00:00" in text and "01:00:00" not in text
        human_time.use_zone("Asia/Urumqi")  # a province may keep its own
        assert human_time.clock(NINE_AM_BEIJING) == "07:00:00"
    finally:
        human_time.use_zone(human_time.DEFAULT_ZONE)
        monkeypatch.delenv("TZ")
        time.tzset()


def test_a_reply_time_reads_alike_in_either_contract_version(monkeypatch):
    """A reply carries ISO 8601 with offset (contract version 2) or, from an older agent, epoch
    seconds: the proctor reads the same exam-zone time; a time without an offset is no time."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    try:
        for at in (NINE_AM_BEIJING, "2026-06-07T09:00:00.000+08:00", "2026-06-07T01:00:00+00:00"):
            assert human_time.clock(at) == "09:00:00", at
        text, code = checkin_text({"verdict": "late_refused", "seat": "3", "ticket": "1", "id_masked": "x",
                                   "time": "2026-06-07T09:16:00.250+08:00", "cutoff": "2026-06-07T09:15:00.000+08:00",
                                   "device": "idreader"})
        assert (text, code) == ("NOT ADMITTED seat 3, ticket 1, ID x at 09:16:00, by idreader: "
                                "late: entry closed at 09:15:00", 1)
        assert [human_time.clock(x) for x in ("2026-06-07T09:00:00", "soon", True)] == ["?", "?", "?"]
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()


def test_watch_stamps_lines_in_the_exam_zone_on_a_utc_shell(tmp_path: Path):
    """``watch`` prints each line with the time it arrived: the exam's, not the shell's."""
    from devkit.localbroker import Broker

    broker = Broker(tmp_path / "b").start()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "examroom.agent.cli", "watch", "--port", str(broker.port),
                                 "--duration", "3"], stdout=subprocess.PIPE, text=True,
                                env={**os.environ, "TZ": "UTC"})
        first = proc.stdout.readline()  # "watching ... (Ctrl-C to stop)": subscribed
        assert first.startswith("watching")
        subprocess.run(["mosquitto_pub", "-p", str(broker.port), "-t", "exam/site01/room101/status",
                        "-m", "{}"], check=True)
        line = proc.stdout.readline()
        proc.wait(10)
        shanghai = human_time.clock()
        assert line[:2] in (shanghai[:2], f"{(int(shanghai[:2]) - 1) % 24:02d}"), (line, shanghai)
    finally:
        broker.kill()
