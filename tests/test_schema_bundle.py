"""The schemas the site checks payloads with are the docs' schemas: the bundle shipped in the
package (examroom/contract/schemas.json) is rebuilt from docs/ and must not drift."""
from __future__ import annotations

from pathlib import Path

from examroom.contract.schemas import PayloadCheck, bundled, from_docs
from tests.schemas import load_schemas

DOCS = Path(__file__).resolve().parent.parent / "docs"


def test_the_shipped_bundle_is_the_docs_schemas():
    assert bundled() == from_docs(DOCS), "docs changed: run .venv/bin/python -m examroom.contract.schemas"
    assert bundled() == load_schemas()  # and the tests' reading of the docs agrees


def test_an_event_of_a_kind_the_contract_does_not_know_is_flagged():
    check = PayloadCheck()
    ev = {"id": "x", "seq": 1, "ts": "2026-06-07T09:00:00+08:00", "kind": "mystery", "session": 1,
          "replayed": False, "data": {}}
    assert check.event("mystery", ev) == ["kind: 'mystery' is not a kind of the contract"]
    assert check.event("note", ev)[0].startswith("kind: 'mystery' differs from the topic's 'note'")


def test_the_sites_validator_agrees_with_the_tests_on_good_and_bad_payloads():
    """The site checks with jsonschema-rs, the tests with jsonschema: they must agree."""
    import json

    from jsonschema import Draft202012Validator

    from tests.site_lab import envelope, heartbeat, status

    def reference(name: str, payload: object) -> bool:
        v = Draft202012Validator(bundled()[name], format_checker=Draft202012Validator.FORMAT_CHECKER)
        return v.is_valid(payload)

    check = PayloadCheck()
    hb = json.loads(heartbeat(3, dropped={"device": 2}))
    st = json.loads(status("online", 3))
    ev = json.loads(envelope(7, "note", {"text": "clock checked"}))
    cases = [("heartbeat", hb, check.heartbeat), ("status", st, check.status),
             ("heartbeat", hb | {"state": "offline"}, check.heartbeat),
             ("heartbeat", hb | {"ts": "yesterday"}, check.heartbeat),
             ("status", st | {"session": 0}, check.status),
             ("status", {k: v for k, v in st.items() if k != "room"}, check.status),
             ("event", ev | {"ts": "2026-13-40T99:00:00+08:00"}, lambda p: check.event("note", p)),
             ("event", ev | {"seq": "7"}, lambda p: check.event("note", p))]
    for name, payload, site in cases:
        assert (site(payload) == []) == reference(name, payload), (name, payload)
    assert [c for c in cases if c[2](c[1]) == []] == cases[:2]  # only the unmutated ones are valid
