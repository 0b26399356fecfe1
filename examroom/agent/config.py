"""The agent's TOML configuration: parsed, checked whole, and frozen.

Every problem in the file is collected before anything starts, so a sysadmin
fixes the file in one pass and the agent never runs half-configured. Keys are
described once in ``SCHEMA``; the same table produces the error messages.
Relative paths are taken relative to the config file, so a config and its seat
plan can travel together.
"""
from __future__ import annotations

import ipaddress
import os
import pwd
import re
import stat
import tomllib
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from examroom.agent.errors import ConfigError, Problem
from examroom.contract.topics import Topics
from examroom.drivers.base import Option

DEFAULT_CONFIG = "/etc/examroom/agent.toml"  # where install.sh puts it: the CLI's default
TOPIC_SAFE = re.compile(r"^[A-Za-z0-9_-]{1,64}\Z")  # \Z: "$" would let a trailing newline in
RESERVED_ROOM_IDS = {"broadcast"}
SCHEMA_VERSION = 1


def _topic_safe(v: str) -> bool:
    return bool(TOPIC_SAFE.match(v))


def _port(v: int) -> bool:
    return 0 < v < 65536


def _positive(v: float) -> bool:
    return v > 0


def _host(v: str) -> bool:
    # "" would make paho connect to nothing and retry for ever with no useful error
    return bool(v) and not any(c.isspace() for c in v)


def time_zone(v: str) -> bool:
    """An IANA zone name this machine knows (tzdata), e.g. Asia/Shanghai."""
    import zoneinfo

    try:
        zoneinfo.ZoneInfo(v)
        return True
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False


def _sha256_or_empty(v: str) -> bool:
    return v == "" or bool(re.fullmatch(r"[0-9a-f]{64}", v))


def _listen(v: str) -> bool:
    if v == "":
        return True
    host, sep, port = v.rpartition(":")
    # isascii: "²".isdigit() is True but int("²") raises
    return bool(sep) and port.isascii() and port.isdigit() and 0 <= int(port) < 65536


def _gpio_pin(help: str) -> Option:
    """A door output: a GPIO number or a gpiozero pin name; absent: that output is not wired."""
    return Option((int, str), check=lambda v: (isinstance(v, int) and v >= 0) or (isinstance(v, str) and bool(v.strip())),
                  expected='a GPIO number (17) or a gpiozero pin name ("GPIO17", "BOARD11")', help=help)


def _pattern_s(default: float, help: str) -> Option:
    return Option((int, float), default=default, check=lambda v: 0.05 <= v <= 30, expected="0.05-30 seconds", help=help)


SCHEMA: dict[str, dict[str, Option]] = {
    "site": {
        "id": Option(str, required=True, check=_topic_safe, expected="1-64 of [A-Za-z0-9_-]"),
        "name": Option(str, default=""),
    },
    "room": {
        "id": Option(str, required=True,
                  check=lambda v: _topic_safe(v) and v not in RESERVED_ROOM_IDS,
                  expected='1-64 of [A-Za-z0-9_-], not "broadcast"'),
        "label": Option(str, default=""),
    },
    "mqtt": {
        "host": Option(str, default="127.0.0.1", check=_host, expected="a host name or IP address"),
        "port": Option(int, default=1883, check=_port, expected="a TCP port 1-65535"),
        "topic_prefix": Option(str, default="exam", check=_topic_safe, expected="1-64 of [A-Za-z0-9_-]"),
        "keepalive_s": Option(int, default=10, check=lambda v: 2 <= v <= 600, expected="2-600 seconds"),
        "username": Option(str, default=""),
        "password": Option(str, default=""),
        "tls_ca": Option(str, default="", path=True),
        "tls_cert": Option(str, default="", path=True),
        "tls_key": Option(str, default="", path=True),
        "reconnect_min_s": Option((int, float), default=0.5, check=_positive, expected="> 0 seconds"),
        "reconnect_max_s": Option((int, float), default=30.0, check=_positive, expected="> 0 seconds"),
        "inflight": Option(int, default=100, check=lambda v: 1 <= v <= 1000, expected="1-1000 messages"),
        "allow_insecure": Option(bool, default=False,
                                 help="send the username/password without TLS (a lab broker only)"),
    },
    "spool": {
        "path": Option(str, default="/var/lib/examroom/spool.db", path=True),
        "max_bytes": Option(int, default=64 * 1024 * 1024, check=lambda v: v >= 64 * 1024,
                         expected=">= 65536 bytes"),
        "sync": Option(str, default="full", check=lambda v: v in ("full", "normal"),
                    expected='"full" (survives power loss) or "normal" (survives a crash)'),
    },
    "heartbeat": {
        "interval_s": Option((int, float), default=10, check=lambda v: 0.1 <= v <= 3600,
                          expected="0.1-3600 seconds"),
    },
    "control": {
        "socket": Option(str, default="/run/examroom/agent.sock", path=True),
        "service_user": Option(str, default="examroom",
                               help="the user the agent runs as: the CLI talks only to a socket it owns"),
    },
    "metrics": {
        "listen": Option(str, default="127.0.0.1:9108", check=_listen,
                      expected='"host:port" or "" to disable'),
    },
    "checkin": {
        "seatplan": Option(str, default="", path=True),
        "record_dir": Option(str, default="/var/lib/examroom/records", path=True),
        "journal": Option(str, default="/var/lib/examroom/checkin.journal", path=True),
    },
    "listening": {
        "auto_switch_backup": Option(bool, default=False),
    },
    "retention": {
        "keep_days": Option((int, float), default=213, check=lambda v: v >= 1,
                            expected="at least 1 day",
                            help="records, reports, snapshots and journal entries are kept this long: "
                                 "half a year after results are published (about a month after the exam)"),
    },
    # the exam-day procedure, per province (docs/procedure.md): the defaults are the national
    # rules the notices quote; a province changes what it does differently
    "procedure": {
        "timezone": Option(str, default="Asia/Shanghai", check=time_zone,
                           expected="an IANA time zone such as Asia/Shanghai",
                           help="every time a person reads (CLI, records, the door page) is in this zone"),
        "handin_not_before_end_min": Option((int, float), default=0, check=lambda v: 0 <= v <= 600,
                                            expected="0-600 minutes",
                                            help="earliest hand-in, minutes before the end signal (0: only at it)"),
        "end_warning_min": Option((int, float), default=15, check=lambda v: 0 < v <= 120,
                                  expected="1-120 minutes", help="the reminder signal before the end"),
        "clock_tolerance_s": Option((int, float), default=1.0, check=lambda v: 0 < v <= 60,
                                    expected="0-60 seconds",
                                    help="time_check: a room clock further off than this is reported wrong"),
        "proctors_required": Option(int, default=2, check=lambda v: 1 <= v <= 4, expected="1-4 proctors"),
        "require_woman": Option(bool, default=True, help="at least one woman among the room's proctors"),
        "distinct_units": Option(bool, default=True, help="the room's proctors come from different units"),
        "violation_codes": Option(str, default="", path=True,
                                  help="the province's violation code list (CSV code,text,escalate); "
                                       "empty: the list shipped in config/violation-codes.csv"),
        "seatplan_sha256": Option(str, default="", check=_sha256_or_empty,
                                  expected="64 lower-case hex characters, or empty",
                                  help="the seat plan's SHA-256 the site distributed: entry stays shut on a mismatch"),
        "photo_dir": Option(str, default="", path=True,
                            help="where the seat plan's photo files are; each is checked at start"),
    },
    # door feedback (docs/procedure.md): only with a [door] table; lights and buzzer are optional
    "door": {
        "backend": Option(str, default="gpio", check=lambda v: v in ("gpio", "sim"), expected='"gpio" or "sim"',
                          help="gpio: gpiozero's pin factory (GPIOZERO_PIN_FACTORY or the board's); sim: mock pins"),
        "green_pin": _gpio_pin("admitted"), "red_pin": _gpio_pin("refused"),
        "amber_pin": _gpio_pin("suspect, duplicate (blinks; the red LED without one)"),
        "buzzer_pin": _gpio_pin("beeps on a refusal"),
        "admitted_s": _pattern_s(1.0, "green on"), "refused_s": _pattern_s(3.0, "red on"),
        "attention_s": _pattern_s(3.0, "amber blinking"), "blink_s": _pattern_s(0.25, "amber on, then off"),
        "beep_s": _pattern_s(0.15, "one beep, and the pause after it"),
        "beeps": Option(int, default=2, check=lambda v: 0 <= v <= 5, expected="0-5 beeps"),
        "page_listen": Option(str, default="127.0.0.1:8090", check=_listen, expected='"host:port" or "" to disable',
                              help="the proctor's page of the last verdicts; keep it on loopback"),
    },
    "log": {
        "level": Option(str, default="INFO",
                     check=lambda v: v.upper() in ("DEBUG", "INFO", "WARNING", "ERROR"),
                     expected="DEBUG, INFO, WARNING or ERROR"),
    },
}

_ARRAYS = {"device", "exam", "proctor"}


@dataclass(frozen=True)
class DeviceConfig:
    kind: str
    name: str
    backend: str
    options: dict[str, Any]


@dataclass(frozen=True)
class Config:
    file: str
    sections: dict[str, dict[str, Any]]
    devices: tuple[DeviceConfig, ...] = ()
    exams: tuple[dict[str, Any], ...] = ()
    schedule: Any = None  # agent.schedule.Schedule when [[exam]] tables are given
    raw: dict[str, Any] = field(default_factory=dict, repr=False)
    warnings: tuple[str, ...] = ()  # not errors: said by check-config and logged by run
    proctors: tuple[dict[str, str], ...] = ()  # the room's proctor roster ([[proctor]]), if any

    def __getattr__(self, name: str) -> Any:
        # config.mqtt["port"] reads better than config.sections["mqtt"]["port"]
        sections = self.__dict__.get("sections", {})
        if name in sections:
            return sections[name]
        raise AttributeError(name)

    @property
    def base_topic(self) -> str:
        return self.topics.base

    @property
    def topics(self) -> Topics:
        return Topics(self.mqtt["topic_prefix"], self.site["id"], self.room["id"])


def _type_name(t: type | tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true/false",
             list: "a list", dict: "a table"}
    if isinstance(t, tuple):
        return " or ".join(names.get(x, x.__name__) for x in t)
    return names.get(t, t.__name__)


def _type_ok(value: Any, t: type | tuple[type, ...]) -> bool:
    types = t if isinstance(t, tuple) else (t,)
    if isinstance(value, bool) and bool not in types:
        return False  # TOML true is not a port number
    return isinstance(value, types)


def check_table(table: Any, schema: dict[str, Any], file: str, prefix: str,
                base_dir: Path, problems: list[Problem]) -> dict[str, Any]:
    """Check one table against its ``Option`` schema; fill defaults. Every problem is collected."""
    if not isinstance(table, dict):
        problems.append(Problem(file, prefix, "expected a table", table))
        return {}
    out: dict[str, Any] = {}
    for key in table:
        if key not in schema:
            known = ", ".join(sorted(schema)) or "none"
            problems.append(Problem(file, f"{prefix}.{key}", f"unknown key (known: {known})"))
    for key, spec in schema.items():
        where = f"{prefix}.{key}"
        if key not in table:
            if spec.required:
                problems.append(Problem(file, where, f"missing; expected {_type_name(spec.type)}"))
            out[key] = spec.default
            continue
        value = table[key]
        if not _type_ok(value, spec.type):
            problems.append(Problem(file, where, f"expected {_type_name(spec.type)}", value))
            continue
        if spec.check is not None and not spec.check(value):
            problems.append(Problem(file, where, f"expected {spec.expected}", value))
            continue
        if spec.path and value:
            if "\x00" in value:  # open() would raise ValueError: a traceback, not a message
                problems.append(Problem(file, where, "expected a path; it holds a NUL character",
                                        value.replace("\x00", "\\0")))
                continue
            value = str((base_dir / value).resolve()) if not Path(value).is_absolute() else value
        out[key] = value
    return out


def _check_devices(tables: Any, file: str, base_dir: Path,
                   problems: list[Problem]) -> list[DeviceConfig]:
    from examroom import drivers  # registry only: imports no hardware library

    if not isinstance(tables, list):
        problems.append(Problem(file, "device", "expected [[device]] tables", tables))
        return []
    devices: list[DeviceConfig] = []
    names: set[str] = set()
    for i, table in enumerate(tables):
        where = f"device[{i}]"
        if not isinstance(table, dict):
            problems.append(Problem(file, where, "expected a table", table))
            continue
        # every check that does not depend on an earlier one runs: a wrong backend must not
        # hide a bad name (the sysadmin would fix one, rerun, and only then see the next)
        kind, name, backend = table.get("kind"), table.get("name"), table.get("backend")
        known = kind in drivers.kinds() and backend in drivers.backends(kind)
        ok = known
        if kind not in drivers.kinds():
            problems.append(Problem(file, f"{where}.kind",
                                    f"expected one of {', '.join(drivers.kinds())}", kind))
        elif not known:
            problems.append(Problem(file, f"{where}.backend",
                                    f"expected one of {', '.join(drivers.backends(kind))} for {kind}",
                                    backend))
        if not isinstance(name, str) or not _topic_safe(name):
            problems.append(Problem(file, f"{where}.name", "expected 1-64 of [A-Za-z0-9_-]", name))
            ok = False
        elif name in names:
            problems.append(Problem(file, f"{where}.name", "duplicate device name", name))
            ok = False
        else:
            names.add(name)
        if not known:
            continue  # the options depend on the driver: nothing to check them against
        cls = drivers.driver_class(kind, backend)
        rest = {k: v for k, v in table.items() if k not in ("kind", "name", "backend")}
        options = check_table(rest, cls.options, file, where, base_dir, problems)
        if ok:
            devices.append(DeviceConfig(kind, name, backend, options))
    return devices


def _check_backoff(mq: dict[str, Any], given: Any, file: str) -> list[Problem]:
    """The back-off grows from min to max; with min > max it would shrink after the first
    wait instead, so neither value would mean what the sysadmin wrote."""
    lo, hi = mq.get("reconnect_min_s"), mq.get("reconnect_max_s")  # absent if already reported
    if lo is None or hi is None or lo <= hi:
        return []
    if isinstance(given, dict) and "reconnect_max_s" in given:
        return [Problem(file, "mqtt.reconnect_max_s", f"expected >= reconnect_min_s ({lo})", hi)]
    return [Problem(file, "mqtt.reconnect_min_s", f"expected <= reconnect_max_s ({hi})", lo)]


def check_tls(mq: dict[str, Any], file: str) -> list[Problem]:
    """Load the TLS files as the uplink will, so a wrong key fails here (exit 2, no restart
    loop under systemd) rather than on every start of the service."""
    import ssl

    ctx = ssl.create_default_context()
    try:
        if mq.get("tls_ca"):
            ctx.load_verify_locations(mq["tls_ca"])
    except (ssl.SSLError, OSError) as e:
        return [Problem(file, "mqtt.tls_ca", f"expected a readable PEM CA certificate ({e})", mq["tls_ca"])]
    try:
        if mq.get("tls_cert"):
            ctx.load_cert_chain(mq["tls_cert"], mq["tls_key"])
    except (ssl.SSLError, OSError) as e:
        return [Problem(file, "mqtt.tls_key", f"expected the readable private key of tls_cert ({e})",
                        mq["tls_key"])]
    return []


def parse(text: str, file: str) -> Config:
    """Parse and check a config text; raises ConfigError with every problem found."""
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([Problem(file, "(syntax)", f"not valid TOML: {e}")]) from None
    except RecursionError:
        raise ConfigError([Problem(file, "(syntax)", "arrays or tables nested too deeply")]) from None
    except ValueError:  # an integer of thousands of digits
        raise ConfigError([Problem(file, "(syntax)", "not usable TOML: a number of more than 4,300 digits")]) from None
    problems: list[Problem] = []
    base_dir = Path(file).resolve().parent
    version = raw.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # TOML true == 1 in Python
        problems.append(Problem(file, "schema_version", f"expected {SCHEMA_VERSION}", version))
    for key in raw:
        if key not in SCHEMA and key not in _ARRAYS and key != "schema_version":
            known = ", ".join(sorted([*SCHEMA, *_ARRAYS]))
            problems.append(Problem(file, key, f"unknown section (known: {known})"))
    sections = {name: check_table(raw.get(name, {}), keys, file, name, base_dir, problems)
                for name, keys in SCHEMA.items()}
    mq = sections["mqtt"]
    for have, lack in (("tls_cert", "tls_key"), ("tls_key", "tls_cert")):
        if mq.get(have) and not mq.get(lack):
            problems.append(Problem(file, f"mqtt.{lack}", f"missing; expected with {have} (they go together)"))
    problems.extend(_check_backoff(mq, raw.get("mqtt"), file))
    for key in ("tls_ca", "tls_cert", "tls_key"):
        if mq.get(key) and not Path(mq[key]).is_file():
            problems.append(Problem(file, f"mqtt.{key}", "expected an existing file", mq[key]))
    if not problems:
        problems.extend(check_tls(mq, file))
    problems.extend(_check_cleartext(mq, file))
    devices = _check_devices(raw.get("device", []), file, base_dir, problems)
    proctors = _check_proctors(raw.get("proctor", []), file, problems)
    exams = raw.get("exam", [])
    schedule = None
    if exams:
        from examroom.agent.schedule import parse_sessions

        try:
            schedule = parse_sessions(exams, file)
        except ConfigError as e:
            problems.extend(e.problems)
    if problems:
        raise ConfigError(problems)
    return Config(file=file, sections=sections, devices=tuple(devices),
                  exams=tuple(exams), schedule=schedule, raw=raw, warnings=tuple(_warnings(mq, file)),
                  proctors=tuple(proctors))


PROCTOR = {"id": Option(str, required=True, check=_topic_safe, expected="1-64 of [A-Za-z0-9_-] (a staff number)",
                        help="what the proctor signs with; the only thing of theirs that leaves the room"),
           "name": Option(str, required=True, check=lambda v: bool(v.strip()), expected="a non-empty name"),
           "unit": Option(str, required=True, check=lambda v: bool(v.strip()), expected="the proctor's work unit"),
           "sex": Option(str, default="", check=lambda v: v.strip() in SEXES, expected='"F" or "M" (女 or 男)',
                         help="for [procedure] require_woman; stays in the room like the name")}
SEXES = {"F": "F", "M": "M", "f": "F", "m": "M", "女": "F", "男": "M", "": ""}  # as written -> as kept


def _check_proctors(tables: Any, file: str, problems: list[Problem]) -> list[dict[str, str]]:
    """The roster: when given, only its ids sign check-in decisions, two signatures are two
    entries. Ids are compared as checkin.same_signature does (P01 = p01 = Ｐ01)."""
    if not isinstance(tables, list):
        problems.append(Problem(file, "proctor", "expected [[proctor]] tables"))
        return []
    out, seen = [], {}
    for i, table in enumerate(tables):
        before = len(problems)
        row = check_table(table, PROCTOR, file, f"proctor[{i}]", Path("."), problems)
        if len(problems) > before:
            continue
        key = "".join(unicodedata.normalize("NFKC", row["id"]).casefold().split())
        if key in seen:
            problems.append(Problem(file, f"proctor[{i}].id", f"the same id as proctor[{seen[key]}]; "
                                    "expected each proctor once", row["id"]))
            continue
        seen[key] = i
        out.append({**row, "sex": SEXES[row["sex"].strip()]})
    return out


def _tls(mq: dict[str, Any]) -> bool:
    return bool(mq.get("tls_ca") or mq.get("tls_cert"))


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_cleartext(mq: dict[str, Any], file: str) -> list[Problem]:
    """A password never travels in clear: without TLS anyone on the site LAN reads it, and
    with it acts as the room."""
    if (mq.get("username") or mq.get("password")) and not _tls(mq) and not mq.get("allow_insecure"):
        return [Problem(file, "mqtt.password" if mq.get("password") else "mqtt.username",
                        "a username/password without TLS would be sent in clear text; set tls_ca "
                        "(and the room's certificate), or allow_insecure = true for a lab broker")]
    return []


def _warnings(mq: dict[str, Any], file: str) -> list[str]:
    if not _tls(mq) and not _loopback(str(mq.get("host", ""))):
        return [f"{file}: mqtt: the broker {mq.get('host')} is not on this box and the link has no TLS: "
                "events and commands cross the network readable and forgeable"]
    return []


def load(path: str | Path) -> Config:
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError([Problem(str(p), "(file)", f"cannot read: {e.strerror}")]) from None
    except UnicodeDecodeError:
        raise ConfigError([Problem(str(p), "(file)", "expected UTF-8 text")]) from None
    except ValueError:  # a NUL in the path
        raise ConfigError([Problem(repr(str(p)), "(file)", "expected a file path without a NUL character")]) from None
    return parse(text, str(p))


# -- the places the agent writes -----------------------------------------------------------
#
# check-config and run check them, so a path the agent cannot use stops it with exit 2
# before it opens anything, not with a traceback after the uplink is up. The rule:
#   * the directory (or, if it does not exist yet, the nearest parent that does) must be a
#     directory on a read-write file system;
#   * its permission bits must let the user write in it and enter it. Root is judged by the
#     bits like any user: the agent runs as its own user (the unit's User=), and root's
#     override would let /proc (mode 0555) pass;
#   * check-config only, since it may run as another user than the service (root before
#     the install, a technician in the examroom group): a missing directory that systemd
#     creates for the service when it starts it (MANAGED_DIRS, the unit's StateDirectory= and
#     RuntimeDirectory=) is fine when its parent exists, and a directory owned by another
#     non-root user is judged by its owner's bits (the service user owns its directories).
# ``run`` has neither allowance: it is the service user, at the moment it starts.

MANAGED_DIRS = (Path("/var/lib/examroom"), Path("/run/examroom"))
SOCKET_PATH_MAX = 107  # a Unix socket address holds 108 bytes, the last one a NUL
DEVICE_WRITE_DIRS = ("snapshot_dir",)  # device options naming a directory its driver writes


def written_paths(cfg: Config) -> list[tuple[str, str, bool]]:
    """(key, path, is a directory) of every place this config makes the agent write."""
    out = [("spool.path", cfg.spool["path"], False), ("control.socket", cfg.control["socket"], False)]
    keeps_records = bool(cfg.checkin["seatplan"]) or cfg.schedule is not None  # the session book
    if keeps_records or any(d.kind == "audio" for d in cfg.devices):
        out.append(("checkin.record_dir", cfg.checkin["record_dir"], True))  # records, trial reports
    if keeps_records:
        out.append(("checkin.journal", cfg.checkin["journal"], False))
    for i, d in enumerate(cfg.devices):  # cfg.devices holds every [[device]]: none had a problem
        out += [(f"device[{i}].{k}", d.options[k], True) for k in DEVICE_WRITE_DIRS if d.options.get(k)]
    return out


def check_paths(cfg: Config, *, as_service: bool) -> list[Problem]:
    """One Problem per path the agent could not write; ``as_service``: judged as the user
    running this process, with no allowance (``run``), else as check-config (see above)."""
    problems = []
    for key, value, is_dir in written_paths(cfg):
        message = _path_problem(Path(value).absolute(), is_dir, as_service)
        if message is None and key == "control.socket":
            message = _socket_problem(Path(value))
        if message is not None:
            problems.append(Problem(cfg.file, key, message, value))
    return problems


def _socket_problem(path: Path) -> str | None:
    if len(os.fsencode(str(path))) > SOCKET_PATH_MAX:
        return f"expected a path of at most {SOCKET_PATH_MAX} bytes (a Unix socket's limit)"
    try:
        mode = path.parent.stat().st_mode
    except OSError:
        return None  # made by the agent (or systemd's RuntimeDirectory=) with its own mode
    if mode & stat.S_IWOTH:
        return ("expected a directory only the service can write (e.g. /run/examroom): in a "
                "world-writable one any user could put a socket of their own there for the CLI to trust")
    return None


def _path_problem(path: Path, is_dir: bool, as_service: bool) -> str | None:
    if not is_dir:
        try:
            mode = path.stat().st_mode
        except OSError:
            mode = 0  # not there (or not reachable): the directory check below says which
        if stat.S_ISDIR(mode):
            return "expected a file name; it is a directory"
        if as_service and stat.S_ISREG(mode) and not os.access(path, os.W_OK):
            return f"expected a file user {_user(os.geteuid())} may write; it is read-only to it"
    probe, missing = (path if is_dir else path.parent), None
    while True:
        try:
            st = probe.stat()
            break
        except (FileNotFoundError, NotADirectoryError):  # not there yet: the agent creates it
            probe, missing = probe.parent, probe
        except OSError as e:
            return f"expected a directory the agent can use; {probe}: {e.strerror}"
    if not stat.S_ISDIR(st.st_mode):
        return f"expected a directory; {probe} is not one"
    if os.statvfs(probe).f_flag & os.ST_RDONLY:
        return f"expected a writable file system; {probe} is on a read-only one"
    if not as_service and missing is not None and Path(os.path.realpath(probe), missing.name) in MANAGED_DIRS:
        return None  # systemd makes it, owned by the service user, before ``run`` starts
    if _may_write(probe, st, as_service):
        return None
    who = _user(os.geteuid())
    bits = f"{probe} is mode {stat.S_IMODE(st.st_mode):04o}, owner {_user(st.st_uid)}"
    if missing is not None:
        return f"expected a directory user {who} can create; {bits}, so it cannot create {missing.name} in it"
    return f"expected a directory user {who} can write in; {bits}"


def _may_write(directory: Path, st: os.stat_result, as_service: bool) -> bool:
    uid = os.geteuid()
    if uid != 0:
        if os.access(directory, os.W_OK | os.X_OK):  # the kernel's answer: ACLs included
            return True
    else:  # root passes access() everywhere: ask the bits, as for any user
        shift = 6 if st.st_uid == uid else 3 if st.st_gid in {os.getegid(), *os.getgroups()} else 0
        if (st.st_mode >> shift) & 0o3 == 0o3:
            return True
    # check-config may run as root or a technician; the service user owns its directories
    return not as_service and st.st_uid not in (uid, 0) and st.st_mode & 0o300 == 0o300


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)
