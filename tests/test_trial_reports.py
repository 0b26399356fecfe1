"""Trial listening reports: none lost when trials end in the same second."""
from __future__ import annotations

import json
from zoneinfo import ZoneInfo

from examroom.agent.trial_reports import TrialReports


def test_two_trials_in_one_second_keep_two_reports(tmp_path):
    events, noted = [], []
    reports = TrialReports(tmp_path, "room101", lambda k, d: events.append(d), lambda: 1780795200.4,
                           lambda inc: noted.append(inc) or "eng-am", ZoneInfo("Asia/Shanghai"))
    first = reports.keep({"device": "broadcast", "pass": True, "measured_s": 30.0})
    second = reports.keep({"device": "broadcast", "pass": False, "measured_s": 29.0})
    assert first["file"] != second["file"]
    assert [json.loads(open(r["file"], encoding="utf-8").read())["pass"] for r in (first, second)] == [True, False]
    assert sorted(e["file"] for e in events) == sorted(p.name for p in tmp_path.iterdir())
    assert [i.fields["file"] for i in noted] == [e["file"] for e in events]
    assert first["recorded_on"] == "eng-am" and "kept with the record of session eng-am" == first["record"]


def test_the_event_and_the_reply_carry_iso_times_the_file_and_the_record_floats(tmp_path):
    """Contract version 2 leaves the box; the technician's file and the session's record keep
    the audio monitor's epoch seconds, as they always did."""
    events, noted = [], []
    reports = TrialReports(tmp_path, "room101", lambda k, d: events.append(d), lambda: 1780795200.4,
                           lambda inc: noted.append(inc) or "eng-am", ZoneInfo("Asia/Shanghai"))
    report = {"device": "broadcast", "pass": False, "measured_s": 10.0, "start": 1780795190.25,
              "end": 1780795200.25, "silences": [{"start": 1780795192.5, "end": 1780795194.0, "offset_s": 2.25,
                                                  "duration_s": 1.5}]}
    reply = reports.keep(report)
    (event,) = events
    for sent in (event, reply):
        assert (sent["v"], sent["start"], sent["end"]) == (
            2, "2026-06-07T09:19:50.250+08:00", "2026-06-07T09:20:00.250+08:00")
        assert sent["silences"] == [{"start": "2026-06-07T09:19:52.500+08:00", "end": "2026-06-07T09:19:54.000+08:00",
                                     "offset_s": 2.25, "duration_s": 1.5}]
    kept = json.loads(open(reply["file"], encoding="utf-8").read())
    assert (kept["start"], kept["silences"][0]["end"], "v" in kept) == (1780795190.25, 1780795194.0, False)
    assert (noted[0].fields["start"], noted[0].fields["end"]) == (1780795190.25, 1780795200.25)
