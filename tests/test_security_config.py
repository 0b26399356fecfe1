"""Security in the config: credentials never travel in clear, and a warning for a bare link."""
from __future__ import annotations

import pytest

from examroom.agent.config import parse
from examroom.agent.errors import ConfigError

BASE = """schema_version = 1
[site]
id = "site01"
[room]
id = "room101"
[mqtt]
host = "{host}"
{extra}
"""


def test_a_password_without_tls_is_refused_unless_allowed():
    with pytest.raises(ConfigError) as e:
        parse(BASE.format(host="10.20.0.2", extra='username = "room101"\npassword = "s3cret"'), "agent.toml")
    [p] = e.value.problems
    assert p.key == "mqtt.password" and "clear text" in p.message and "allow_insecure" in p.message
    assert "s3cret" not in str(e.value)  # the password itself is never echoed
    cfg = parse(BASE.format(host="10.20.0.2", extra='username = "u"\npassword = "p"\nallow_insecure = true'),
                "agent.toml")
    assert cfg.mqtt["allow_insecure"] is True


@pytest.mark.parametrize("host,warned", [("10.20.0.2", True), ("broker.site", True), ("127.0.0.1", False),
                                         ("::1", False), ("localhost", False)])
def test_a_non_tls_broker_off_the_box_is_warned_about(host, warned):
    cfg = parse(BASE.format(host=host, extra=""), "agent.toml")
    assert bool(cfg.warnings) is warned
    if warned:
        assert "no TLS" in cfg.warnings[0] and host in cfg.warnings[0]


def test_a_control_socket_in_a_world_writable_directory_is_a_config_error(tmp_path):
    from examroom.agent.config import check_paths
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o1777)
    cfg = parse(BASE.format(host="127.0.0.1", extra="") +
                f'[spool]\npath = "{tmp_path}/spool.db"\n[control]\nsocket = "{shared}/agent.sock"\n', "agent.toml")
    [p] = check_paths(cfg, as_service=True)
    assert p.key == "control.socket" and "world-writable" in p.message
    shared.chmod(0o750)
    assert check_paths(cfg, as_service=True) == []


def test_a_proctor_roster_is_checked_and_one_id_given_twice_is_refused():
    roster = ('\n[[proctor]]\nid = "P01"\nname = "监考甲"\nunit = "一中"\n'
              '[[proctor]]\nid = "P02"\nname = "监考乙"\nunit = "二中"\n')
    cfg = parse(BASE.format(host="127.0.0.1", extra="") + roster, "agent.toml")
    assert [p["id"] for p in cfg.proctors] == ["P01", "P02"]
    with pytest.raises(ConfigError) as e:
        parse(BASE.format(host="127.0.0.1", extra="") + roster + '[[proctor]]\nid = "p01"\nname = "x"\nunit = "y"\n',
              "agent.toml")
    assert [p.key for p in e.value.problems] == ["proctor[2].id"]
