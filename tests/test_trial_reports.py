"""Trial listening reports: none lost when trials end in the same second."""
from __future__ import annotations

import json

from examroom.agent.trial_reports import TrialReports


def test_two_trials_in_one_second_keep_two_reports(tmp_path):
    events, noted = [], []
    reports = TrialReports(tmp_path, "room101", lambda k, d: events.append(d), lambda: 1780795200.4,
                           lambda inc: noted.append(inc) or "eng-am")
    first = reports.keep({"device": "broadcast", "pass": True, "measured_s": 30.0})
    second = reports.keep({"device": "broadcast", "pass": False, "measured_s": 29.0})
    assert first["file"] != second["file"]
    assert [json.loads(open(r["file"], encoding="utf-8").read())["pass"] for r in (first, second)] == [True, False]
    assert sorted(e["file"] for e in events) == sorted(p.name for p in tmp_path.iterdir())
    assert [i.fields["file"] for i in noted] == [e["file"] for e in events]
    assert first["recorded_on"] == "eng-am" and "kept with the record of session eng-am" == first["record"]
