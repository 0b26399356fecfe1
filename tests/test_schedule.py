import tomllib
from datetime import datetime

import pytest

from examroom.agent.errors import ConfigError
from examroom.agent.schedule import parse_sessions
from examroom.contract.vocabulary import Phase

TOML = """
[[exam]]
id = "chn-am"
subject = "Chinese"
start = 2026-06-07T09:00:00+08:00
end = 2026-06-07T11:30:00+08:00

[[exam]]
id = "eng-pm"
subject = "English"
start = "2026-06-08T15:00:00+08:00"
end = "2026-06-08T17:00:00+08:00"
entry_before_min = 45
late_cutoff_min = -15
listening = [{start = 2026-06-08T15:00:00+08:00, end = 2026-06-08T15:20:00+08:00}]
"""


def ts(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()


def keys(exc):
    return [p.key for p in exc.value.problems]


@pytest.fixture
def sched():
    return parse_sessions(tomllib.loads(TOML)["exam"], "agent.toml")


def test_defaults_and_phases(sched):
    chn = sched.get("chn-am")
    assert chn.entry_before_min == 30 and chn.late_cutoff_min == 15
    assert sched.phase(ts("2026-06-07T08:29:59+08:00")) == (chn, Phase.BEFORE_ENTRY)
    assert sched.phase(ts("2026-06-07T08:30:00+08:00")) == (chn, Phase.ENTRY)
    assert sched.phase(ts("2026-06-07T09:00:00+08:00")) == (chn, Phase.IN_PROGRESS)
    assert sched.phase(ts("2026-06-07T09:14:59+08:00")) == (chn, Phase.IN_PROGRESS)
    assert sched.phase(ts("2026-06-07T09:15:00+08:00")) == (chn, Phase.CUTOFF_PASSED)
    assert chn.phase(ts("2026-06-07T11:30:00+08:00")) == Phase.ENDED
    eng = sched.get("eng-pm")
    # between sessions the room waits for the next one
    assert sched.phase(ts("2026-06-07T11:30:00+08:00")) == (eng, Phase.BEFORE_ENTRY)
    assert sched.phase(ts("2026-06-08T17:00:00+08:00")) == (eng, Phase.ENDED)


def test_negative_cutoff_closes_entry_before_start(sched):
    eng = sched.get("eng-pm")
    assert eng.phase(ts("2026-06-08T14:15:00+08:00")) == Phase.ENTRY
    assert eng.entry_allowed(ts("2026-06-08T14:44:59+08:00"))
    assert eng.phase(ts("2026-06-08T14:45:00+08:00")) == Phase.CUTOFF_PASSED
    assert not eng.entry_allowed(ts("2026-06-08T15:05:00+08:00"))


def test_listening_windows(sched):
    eng = sched.get("eng-pm")
    assert sched.listening_at(ts("2026-06-08T14:59:59+08:00")) is None
    s, w = sched.listening_at(ts("2026-06-08T15:00:00+08:00"))
    assert s is eng and w.end == ts("2026-06-08T15:20:00+08:00")
    assert sched.listening_at(ts("2026-06-08T15:19:59+08:00")) == (eng, w)
    assert sched.listening_at(ts("2026-06-08T15:20:00+08:00")) is None  # the end is outside
    assert sched.get("chn-am").listening == ()
    assert sched.listening_at(ts("2026-06-07T09:10:00+08:00")) is None


def test_empty_schedule():
    s = parse_sessions([], "agent.toml")
    assert s.phase(0) == (None, Phase.ENDED) and s.listening_at(0) is None and s.get("x") is None


def test_naive_and_bad_times_are_errors():
    with pytest.raises(ConfigError) as e:
        parse_sessions([{"id": "a", "subject": "X", "start": datetime(2026, 6, 7, 9),
                         "end": "2026-06-07T11:00:00", "listening": [{"start": "soon", "end": 3}]}], "f.toml")
    assert keys(e) == ["exam[0].start", "exam[0].end", "exam[0].listening[0].start",
                       "exam[0].listening[0].end"]
    assert "UTC offset" in str(e.value) and e.value.problems[0].file == "f.toml"


def test_every_validation_problem_is_reported():
    base = {"subject": "M", "start": "2026-06-07T09:00:00+08:00", "end": "2026-06-07T11:00:00+08:00"}
    tables = [
        {**base, "id": "a/b"},                                             # not topic-safe
        {**base, "id": "b", "start": "2026-06-08T09:00:00+08:00", "end": "2026-06-08T08:00:00+08:00"},
        {**base, "id": "c", "start": "2026-06-09T09:00:00+08:00", "end": "2026-06-09T11:00:00+08:00",
         "listening": [{"start": "2026-06-09T08:50:00+08:00", "end": "2026-06-09T09:20:00+08:00"}]},
        {**base, "id": "d", "start": "2026-06-10T09:00:00+08:00", "end": "2026-06-10T11:00:00+08:00",
         "late_cutoff_min": -40},                                          # closes before it opens
        {**base, "id": "e", "start": "2026-06-11T09:00:00+08:00", "end": "2026-06-11T11:00:00+08:00",
         "entry_before_min": "30", "subject": "", "late_cuttoff_min": 15},
        {**base, "id": "f", "start": "2026-06-12T09:00:00+08:00", "end": "2026-06-12T11:00:00+08:00"},
        {**base, "id": "f", "start": "2026-06-12T11:10:00+08:00", "end": "2026-06-12T12:00:00+08:00"},
        "not a table",
    ]
    with pytest.raises(ConfigError) as e:
        parse_sessions(tables, "agent.toml")
    assert keys(e) == ["exam[0].id", "exam[1].end", "exam[2].listening[0]", "exam[3].late_cutoff_min",
                       "exam[4].late_cuttoff_min", "exam[4].subject", "exam[4].entry_before_min",
                       "exam[7]", "exam[6].id", "exam[6].start"]


def test_cutoff_must_fall_before_end():
    with pytest.raises(ConfigError) as e:
        parse_sessions([{"id": "a", "subject": "X", "start": "2026-06-07T09:00:00+08:00",
                         "end": "2026-06-07T09:10:00+08:00"}], "f.toml")
    assert keys(e) == ["exam[0].late_cutoff_min"]
