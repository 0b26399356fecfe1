"""The config is checked whole: every mistake becomes one Problem naming file, key, value, expectation."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from examroom.agent import config
from examroom.agent.errors import ConfigError, Problem
from tests.configs import MINIMAL

ROOT = Path(__file__).resolve().parent.parent


def write(tmp_path: Path, text: str, name: str = "agent.toml") -> Path:
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def problems_of(tmp_path: Path, text: str) -> tuple[Path, list[Problem]]:
    p = write(tmp_path, text)
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    return p, ei.value.problems


def only(problems: list[Problem], key: str) -> Problem:
    hits = [p for p in problems if p.key == key]
    assert len(hits) == 1, f"expected one problem at {key}, got {problems}"
    return hits[0]


def with_section(section: str, body: str) -> str:
    """MINIMAL plus one more section (or extra keys for site/room)."""
    if section in ("site", "room"):
        return MINIMAL.replace(f"[{section}]\n", f"[{section}]\n{body}\n")
    return MINIMAL + f"[{section}]\n{body}\n"


# -- a good file --------------------------------------------------------------

def test_minimal_config_fills_defaults(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, MINIMAL))
    assert cfg.site == {"id": "site01", "name": ""}
    assert cfg.room["id"] == "room101"
    assert cfg.mqtt["host"] == "127.0.0.1"
    assert cfg.mqtt["port"] == 1883
    assert cfg.mqtt["keepalive_s"] == 10
    assert cfg.mqtt["topic_prefix"] == "exam"
    assert cfg.spool["path"] == "/var/lib/examroom/spool.db"
    assert cfg.spool["max_bytes"] == 64 * 1024 * 1024
    assert cfg.spool["sync"] == "full"
    assert cfg.heartbeat["interval_s"] == 10
    assert cfg.control["socket"] == "/run/examroom/agent.sock"
    assert cfg.metrics["listen"] == "127.0.0.1:9108"
    assert cfg.listening["auto_switch_backup"] is False
    assert cfg.log["level"] == "INFO"
    assert cfg.devices == ()
    assert cfg.schedule is None
    assert cfg.base_topic == "exam/site01/room101"


def test_relative_paths_resolve_against_config_dir(tmp_path: Path, monkeypatch) -> None:
    conf_dir = tmp_path / "etc"
    conf_dir.mkdir()
    make_pem_pair(conf_dir, "ca")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # paths must not depend on where the agent was started
    text = MINIMAL + """
[spool]
path = "data/spool.db"
[control]
socket = "/run/x/agent.sock"
[checkin]
record_dir = "../records"
[mqtt]
tls_ca = "ca.pem"
"""
    cfg = config.load(write(conf_dir, text))
    assert cfg.spool["path"] == str(conf_dir / "data" / "spool.db")
    assert cfg.checkin["record_dir"] == str(tmp_path / "records")
    assert cfg.control["socket"] == "/run/x/agent.sock"  # absolute stays as is
    assert cfg.mqtt["tls_ca"] == str(conf_dir / "ca.pem")
    assert cfg.checkin["seatplan"] == ""  # empty path stays empty (not the config dir)


def test_float_accepted_where_number_expected(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, with_section("heartbeat", "interval_s = 0.5")))
    assert cfg.heartbeat["interval_s"] == 0.5


# -- the file itself ----------------------------------------------------------

def test_toml_syntax_error(tmp_path: Path) -> None:
    p, problems = problems_of(tmp_path, MINIMAL + "[mqtt\nport = 1\n")
    assert len(problems) == 1
    pr = problems[0]
    assert pr.file == str(p)
    assert pr.key == "(syntax)"
    assert "not valid TOML" in pr.message and "line" in pr.message


def test_unreadable_file(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as ei:
        config.load(missing)
    [pr] = ei.value.problems
    assert pr.file == str(missing) and pr.key == "(file)"
    assert "cannot read" in pr.message and "No such file" in pr.message
    # a directory (readable by root too, but not a file)
    with pytest.raises(ConfigError) as ei:
        config.load(tmp_path)
    [pr] = ei.value.problems
    assert pr.key == "(file)" and "cannot read" in pr.message


def test_non_utf8_file(tmp_path: Path) -> None:
    p = tmp_path / "gbk.toml"
    p.write_bytes(MINIMAL.encode() + '[site]\nname = "考场"\n'.encode("gbk"))
    with pytest.raises(ConfigError) as ei:
        config.load(p)
    [pr] = ei.value.problems
    assert pr.file == str(p) and pr.key == "(file)" and "UTF-8" in pr.message


# -- schema_version and sections ------------------------------------------------

@pytest.mark.parametrize("line, value", [
    ("", None),
    ("schema_version = 2", 2),
    ('schema_version = "1"', "1"),
    ("schema_version = true", True),   # True == 1 in Python; must not pass
    ("schema_version = 1.0", 1.0),
])
def test_schema_version(tmp_path: Path, line: str, value) -> None:
    text = MINIMAL.replace("schema_version = 1", line)
    p, problems = problems_of(tmp_path, text)
    pr = only(problems, "schema_version")
    assert pr.file == str(p)
    assert pr.message == "expected 1"
    assert pr.value == value and type(pr.value) is type(value)


def test_unknown_section_lists_known(tmp_path: Path) -> None:
    _, problems = problems_of(tmp_path, MINIMAL + "[mqqt]\nport = 1883\n")
    pr = only(problems, "mqqt")
    assert "unknown section" in pr.message
    for known in ("mqtt", "spool", "device", "exam", "site", "room"):
        assert known in pr.message


def test_section_not_a_table(tmp_path: Path) -> None:
    _, problems = problems_of(tmp_path, "mqtt = 5\n" + MINIMAL)
    pr = only(problems, "mqtt")
    assert pr.message == "expected a table" and pr.value == 5


def test_unknown_key_lists_known(tmp_path: Path) -> None:
    _, problems = problems_of(tmp_path, with_section("mqtt", "prot = 1883"))
    pr = only(problems, "mqtt.prot")
    assert "unknown key" in pr.message
    assert "port" in pr.message and "keepalive_s" in pr.message and "host" in pr.message


def test_missing_required_keys(tmp_path: Path) -> None:
    _, problems = problems_of(tmp_path, "schema_version = 1\n")
    assert {p.key for p in problems} == {"site.id", "room.id"}
    assert all(p.message.startswith("missing; expected a string") for p in problems)


# -- types and ranges -------------------------------------------------------------

@pytest.mark.parametrize("section, body, key, value, expected", [
    ("mqtt", 'port = "1883"', "mqtt.port", "1883", "expected an integer"),
    ("mqtt", "port = true", "mqtt.port", True, "expected an integer"),
    ("mqtt", "port = 1883.0", "mqtt.port", 1883.0, "expected an integer"),
    ("mqtt", "port = 0", "mqtt.port", 0, "expected a TCP port 1-65535"),
    ("mqtt", "port = 70000", "mqtt.port", 70000, "expected a TCP port 1-65535"),
    ("mqtt", "keepalive_s = 1", "mqtt.keepalive_s", 1, "expected 2-600 seconds"),
    ("mqtt", "keepalive_s = 601", "mqtt.keepalive_s", 601, "expected 2-600 seconds"),
    ("mqtt", "keepalive_s = false", "mqtt.keepalive_s", False, "expected an integer"),
    ("mqtt", "reconnect_min_s = 0", "mqtt.reconnect_min_s", 0, "expected > 0 seconds"),
    ("mqtt", 'host = ""', "mqtt.host", "", "expected a host name or IP address"),
    ("mqtt", 'host = "broker .lan"', "mqtt.host", "broker .lan", "expected a host name or IP address"),
    ("mqtt", "inflight = 0", "mqtt.inflight", 0, "expected 1-1000 messages"),
    ("mqtt", 'topic_prefix = "exam/x"', "mqtt.topic_prefix", "exam/x", "expected 1-64 of [A-Za-z0-9_-]"),
    ("heartbeat", "interval_s = 0.05", "heartbeat.interval_s", 0.05, "expected 0.1-3600 seconds"),
    ("heartbeat", "interval_s = 3601", "heartbeat.interval_s", 3601, "expected 0.1-3600 seconds"),
    ("heartbeat", 'interval_s = "10"', "heartbeat.interval_s", "10", "expected an integer or a number"),
    ("heartbeat", "interval_s = true", "heartbeat.interval_s", True, "expected an integer or a number"),
    ("spool", "max_bytes = 1024", "spool.max_bytes", 1024, "expected >= 65536 bytes"),
    ("spool", 'max_bytes = "64M"', "spool.max_bytes", "64M", "expected an integer"),
    ("spool", 'sync = "off"', "spool.sync", "off", 'expected "full" (survives power loss)'),
    ("spool", "path = 5", "spool.path", 5, "expected a string"),
    ("metrics", 'listen = "127.0.0.1:70000"', "metrics.listen", "127.0.0.1:70000", 'expected "host:port"'),
    ("metrics", 'listen = "127.0.0.1"', "metrics.listen", "127.0.0.1", 'expected "host:port"'),
    ("metrics", 'listen = "127.0.0.1:http"', "metrics.listen", "127.0.0.1:http", 'expected "host:port"'),
    ("metrics", 'listen = "127.0.0.1:²"', "metrics.listen", "127.0.0.1:²", 'expected "host:port"'),
    ("metrics", "listen = 9108", "metrics.listen", 9108, "expected a string"),
    ("log", 'level = "LOUD"', "log.level", "LOUD", "expected DEBUG, INFO, WARNING or ERROR"),
    ("listening", "auto_switch_backup = 1", "listening.auto_switch_backup", 1, "expected true/false"),
    ("site", 'name = ["a"]', "site.name", ["a"], "expected a string"),
])
def test_bad_values(tmp_path: Path, section, body, key, value, expected) -> None:
    p, problems = problems_of(tmp_path, with_section(section, body))
    pr = only(problems, key)
    assert pr.file == str(p)
    assert pr.value == value and type(pr.value) is type(value)
    assert pr.message.startswith(expected), pr.message
    assert len(problems) == 1, problems
    # the printed form names all four
    assert str(pr) == f"{p}: {key}: {pr.message} (got {value!r})"


@pytest.mark.parametrize("body, key, value, expected", [
    ("reconnect_min_s = 60\nreconnect_max_s = 1", "mqtt.reconnect_max_s", 1, "expected >= reconnect_min_s (60)"),
    ("reconnect_min_s = 60", "mqtt.reconnect_min_s", 60, "expected <= reconnect_max_s (30.0)"),  # max: default
    ("reconnect_max_s = 0.1", "mqtt.reconnect_max_s", 0.1, "expected >= reconnect_min_s (0.5)"),
])
def test_reconnect_backoff_min_above_max(tmp_path: Path, body, key, value, expected) -> None:
    p, problems = problems_of(tmp_path, with_section("mqtt", body))
    assert problems == [Problem(str(p), key, expected, value)]


def test_reconnect_backoff_equal_bounds_and_bad_bound_reported_once(tmp_path: Path) -> None:
    cfg = config.load(write(tmp_path, with_section("mqtt", "reconnect_min_s = 2\nreconnect_max_s = 2")))
    assert (cfg.mqtt["reconnect_min_s"], cfg.mqtt["reconnect_max_s"]) == (2, 2)
    # a bound already wrong on its own is not compared as well
    _, problems = problems_of(tmp_path, with_section("mqtt", "reconnect_min_s = 60\nreconnect_max_s = -1"))
    assert [p.key for p in problems] == ["mqtt.reconnect_max_s"]
    assert problems[0].message == "expected > 0 seconds"


@pytest.mark.parametrize("listen", ["", "0.0.0.0:9108", ":9108", "[::1]:9108"])
def test_good_metrics_listen(tmp_path: Path, listen: str) -> None:
    cfg = config.load(write(tmp_path, with_section("metrics", f'listen = "{listen}"')))
    assert cfg.metrics["listen"] == listen


@pytest.mark.parametrize("section, bad", [
    ("site", "site 01"), ("site", "site/01"), ("site", ""), ("site", "a" * 65), ("site", "场"),
    ("site", "site01\n"), ("room", "room+"), ("room", "#"), ("room", "room101\n"),
])
def test_ids_must_be_topic_safe(tmp_path: Path, section: str, bad: str) -> None:
    good = {"site": "site01", "room": "room101"}[section]
    # build the TOML string explicitly so "\n" is a TOML escape
    toml_str = '"' + bad.replace("\\", "\\\\").replace("\n", "\\n") + '"'
    text = MINIMAL.replace(f'id = "{good}"', f"id = {toml_str}")
    _, problems = problems_of(tmp_path, text)
    pr = only(problems, f"{section}.id")
    assert pr.value == bad
    assert "1-64 of [A-Za-z0-9_-]" in pr.message


def test_room_id_broadcast_reserved(tmp_path: Path) -> None:
    _, problems = problems_of(tmp_path, MINIMAL.replace('id = "room101"', 'id = "broadcast"'))
    pr = only(problems, "room.id")
    assert pr.value == "broadcast" and '"broadcast"' in pr.message
    # only the room id is reserved: a site may be called that
    config.load(write(tmp_path, MINIMAL.replace('id = "site01"', 'id = "broadcast"'), "b.toml"))


# -- TLS ------------------------------------------------------------------------------

def test_tls_cert_without_key(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    _, problems = problems_of(tmp_path, with_section("mqtt", 'tls_cert = "cert.pem"'))
    pr = only(problems, "mqtt.tls_key")
    assert "tls_cert" in pr.message and "missing" in pr.message
    assert len(problems) == 1


def test_tls_key_without_cert(tmp_path: Path) -> None:
    (tmp_path / "key.pem").write_text("x")
    _, problems = problems_of(tmp_path, with_section("mqtt", 'tls_key = "key.pem"'))
    pr = only(problems, "mqtt.tls_cert")
    assert "tls_key" in pr.message
    assert len(problems) == 1


def test_tls_files_must_exist(tmp_path: Path) -> None:
    (tmp_path / "cert.pem").write_text("x")
    body = 'tls_ca = "ca.pem"\ntls_cert = "cert.pem"\ntls_key = "keys/key.pem"'
    _, problems = problems_of(tmp_path, with_section("mqtt", body))
    assert {p.key for p in problems} == {"mqtt.tls_ca", "mqtt.tls_key"}
    pr = only(problems, "mqtt.tls_key")
    assert pr.message == "expected an existing file"
    assert pr.value == str(tmp_path / "keys" / "key.pem")  # resolved, so the person sees where we looked


def make_pem_pair(d: Path, name: str) -> None:
    """A real self-signed certificate and its key: the config loads them as the uplink will."""
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                    "-nodes", "-keyout", str(d / f"{name}-key.pem"), "-out", str(d / f"{name}.pem"),
                    "-subj", f"/CN={name}", "-days", "1"], check=True, capture_output=True)


def test_tls_all_present_ok(tmp_path: Path) -> None:
    make_pem_pair(tmp_path, "ca")
    make_pem_pair(tmp_path, "cert")
    body = 'tls_ca = "ca.pem"\ntls_cert = "cert.pem"\ntls_key = "cert-key.pem"'
    cfg = config.load(write(tmp_path, with_section("mqtt", body)))
    assert cfg.mqtt["tls_key"] == str(tmp_path / "cert-key.pem")


def test_tls_key_of_another_cert_is_refused(tmp_path: Path) -> None:
    make_pem_pair(tmp_path, "cert")
    make_pem_pair(tmp_path, "other")
    body = 'tls_cert = "cert.pem"\ntls_key = "other-key.pem"'
    _, problems = problems_of(tmp_path, with_section("mqtt", body))
    pr = only(problems, "mqtt.tls_key")
    assert "private key of tls_cert" in pr.message and pr.value == str(tmp_path / "other-key.pem")


def test_tls_ca_not_a_certificate(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate")
    _, problems = problems_of(tmp_path, with_section("mqtt", 'tls_ca = "ca.pem"'))
    assert "PEM CA certificate" in only(problems, "mqtt.tls_ca").message


# -- [[device]] -------------------------------------------------------------------------
# metal_detector and clock driver modules are committed (others are being written concurrently).

def device(**kv) -> str:
    def val(v):
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v + '"'
        return repr(v)
    return "\n[[device]]\n" + "".join(f"{k} = {val(v)}\n" for k, v in kv.items())


def test_good_devices_fill_option_defaults(tmp_path: Path) -> None:
    text = MINIMAL + device(kind="clock", name="clock1", backend="sim", poll_interval_s=0.5) \
        + device(kind="metal_detector", name="md", backend="sim")
    cfg = config.load(write(tmp_path, text))
    c, md = cfg.devices
    assert (c.kind, c.name, c.backend) == ("clock", "clock1", "sim")
    assert c.options["poll_interval_s"] == 0.5
    assert c.options["max_offset_s"] == 0.5   # defaults filled
    assert c.options["synced"] is True
    assert md.kind == "metal_detector" and md.options["debounce_ms"] == 50


def test_device_unknown_kind(tmp_path: Path) -> None:
    _, problems = problems_of(tmp_path, MINIMAL + device(kind="teleporter", name="t", backend="sim"))
    pr = only(problems, "device[0].kind")
    assert pr.value == "teleporter"
    assert "expected one of" in pr.message and "clock" in pr.message and "metal_detector" in pr.message


def test_device_missing_kind(tmp_path: Path) -> None:
    _, problems = problems_of(tmp_path, MINIMAL + device(name="t", backend="sim"))
    pr = only(problems, "device[0].kind")
    assert "expected one of" in pr.message


def test_device_unknown_backend(tmp_path: Path) -> None:
    _, problems = problems_of(tmp_path, MINIMAL + device(kind="metal_detector", name="r", backend="usb"))
    pr = only(problems, "device[0].backend")
    assert pr.value == "usb"
    assert "gpio, sim" in pr.message and "for metal_detector" in pr.message


@pytest.mark.parametrize("name", ["bad name", "a/b", "", "x" * 65])
def test_device_bad_name(tmp_path: Path, name: str) -> None:
    _, problems = problems_of(tmp_path, MINIMAL + device(kind="clock", name=name, backend="sim"))
    pr = only(problems, "device[0].name")
    assert pr.value == name and "1-64 of [A-Za-z0-9_-]" in pr.message


@pytest.mark.parametrize("table, keys", [
    ({"kind": "clock", "name": "bad name", "backend": "usb"}, {"backend", "name"}),
    ({"kind": "teleporter", "name": "bad name", "backend": "sim"}, {"kind", "name"}),
    ({"kind": "clock", "name": "bad name", "backend": "sim", "synced": "yes"}, {"name", "synced"}),
])
def test_device_every_problem_of_a_table(tmp_path: Path, table, keys) -> None:
    """A wrong backend used to hide a bad name: fix one, rerun, only then see the next."""
    p, problems = problems_of(tmp_path, MINIMAL + device(**table))
    assert {pr.key for pr in problems} == {f"device[0].{k}" for k in keys}
    name = only(problems, "device[0].name")
    assert str(name) == f"{p}: device[0].name: expected 1-64 of [A-Za-z0-9_-] (got 'bad name')"


def test_device_name_not_a_string(tmp_path: Path) -> None:
    _, problems = problems_of(tmp_path, MINIMAL + device(kind="clock", name=7, backend="sim"))
    assert only(problems, "device[0].name").value == 7


def test_device_duplicate_name(tmp_path: Path) -> None:
    text = MINIMAL + device(kind="clock", name="r", backend="sim") \
        + device(kind="metal_detector", name="r", backend="sim")
    _, problems = problems_of(tmp_path, text)
    pr = only(problems, "device[1].name")
    assert pr.value == "r" and "duplicate" in pr.message
    assert len(problems) == 1


def test_device_unknown_option_lists_known(tmp_path: Path) -> None:
    _, problems = problems_of(tmp_path, MINIMAL + device(kind="clock", name="r", backend="sim", speed=9600))
    pr = only(problems, "device[0].speed")
    assert "unknown key" in pr.message
    for known in ("poll_interval_s", "max_offset_s", "synced"):
        assert known in pr.message


@pytest.mark.parametrize("kind, opt, value, expected", [
    ("metal_detector", "debounce_ms", "fast", "expected an integer"),
    ("metal_detector", "debounce_ms", True, "expected an integer"),   # TOML true is not a number
    ("metal_detector", "debounce_ms", 6000, "expected 0..5000 milliseconds"),
    ("metal_detector", "alarm_active_low", 1, "expected true/false"),
    ("clock", "poll_interval_s", "10", "expected an integer or a number"),
    ("clock", "poll_interval_s", False, "expected an integer or a number"),
    ("clock", "synced", "yes", "expected true/false"),
])
def test_device_option_type_and_range(tmp_path: Path, kind, opt, value, expected) -> None:
    p, problems = problems_of(tmp_path, MINIMAL + device(kind=kind, name="r", backend="sim", **{opt: value}))
    pr = only(problems, f"device[0].{opt}")
    assert pr.file == str(p)
    assert pr.value == value and type(pr.value) is type(value)
    assert pr.message.startswith(expected)


def test_device_as_plain_table(tmp_path: Path) -> None:
    _, problems = problems_of(tmp_path, MINIMAL + '[device]\nkind = "pcsc"\n')
    pr = only(problems, "device")
    assert "[[device]]" in pr.message


# -- everything at once -----------------------------------------------------------------

BROKEN = """
schema_version = 3
[site]
id = "site 01"
[room]
id = "broadcast"
colour = "blue"
[mqtt]
port = true
keepalive_s = 1
[spool]
max_bytes = 10
sync = "sometimes"
[heartbeat]
interval_s = 0
[metrics]
listen = "localhost:99999"
[bogus]
x = 1

[[device]]
kind = "metal_detector"
name = "r1"
backend = "sim"
debounce_ms = "fast"
turbo = true

[[device]]
kind = "clock"
name = "r1"
backend = "sim"

[[device]]
kind = "jetpack"
name = "j 1"
backend = "sim"
"""

BROKEN_KEYS = {
    "schema_version", "site.id", "room.id", "room.colour", "mqtt.port", "mqtt.keepalive_s",
    "spool.max_bytes", "spool.sync", "heartbeat.interval_s", "metrics.listen", "bogus",
    "device[0].debounce_ms", "device[0].turbo", "device[1].name", "device[2].kind", "device[2].name",
}


def test_every_problem_reported_at_once(tmp_path: Path) -> None:
    p, problems = problems_of(tmp_path, BROKEN)
    assert sorted(pr.key for pr in problems) == sorted(BROKEN_KEYS)
    assert all(pr.file == str(p) for pr in problems)
    assert all(pr.message for pr in problems)


# -- the CLI --------------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "examroom.agent.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_cli_check_config_reports_every_problem(tmp_path: Path) -> None:
    p = write(tmp_path, BROKEN)
    r = run_cli("check-config", str(p))
    assert r.returncode == 2, r.stderr
    assert r.stdout == ""
    lines = r.stderr.splitlines()
    assert len(lines) == len(BROKEN_KEYS), r.stderr
    for line in lines:
        assert line.startswith(f"error: {p}: ")
    keys = {line[len(f"error: {p}: "):].split(": ", 1)[0] for line in lines}
    assert keys == BROKEN_KEYS
    assert f"error: {p}: mqtt.port: expected an integer (got True)" in lines
    assert f"error: {p}: spool.sync: " in r.stderr and "(got 'sometimes')" in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_check_config_syntax_error(tmp_path: Path) -> None:
    p = write(tmp_path, "schema_version = \n")
    r = run_cli("check-config", str(p))
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {p}: (syntax): not valid TOML")
    assert "Traceback" not in r.stderr


def test_cli_check_config_missing_file(tmp_path: Path) -> None:
    r = run_cli("check-config", str(tmp_path / "absent.toml"))
    assert r.returncode == 2
    assert r.stderr.startswith(f"error: {tmp_path / 'absent.toml'}: (file): cannot read")


def test_cli_check_config_ok(tmp_path: Path) -> None:
    p = write(tmp_path, MINIMAL + device(kind="clock", name="clock1", backend="sim"))
    r = run_cli("check-config", str(p))
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    first = r.stdout.splitlines()[0]
    assert first.startswith(f"{p}: OK")
    assert "room101" in first and "site01" in first and "exam/site01/room101/" in first
    assert "clock1 (clock/sim)" in first
