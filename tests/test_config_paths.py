"""The paths the agent writes are checked before it starts (check-config and run): each one it
could not use is one Problem naming file, key, value and what was expected."""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
from pathlib import Path

import pytest

from examroom.agent import config
from examroom.agent.errors import Problem

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "deploy/systemd/examroom-agent.service"
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another user needs root")


def load(tmp_path: Path, body: str, socket: str = "") -> config.Config:
    p = tmp_path / "agent.toml"
    p.write_text(f"""
schema_version = 1
[site]
id = "site01"
[room]
id = "room101"
[spool]
path = "{tmp_path}/state/spool.db"
[control]
socket = "{socket or f'{tmp_path}/run/agent.sock'}"
{body}
""", encoding="utf-8")
    return config.load(p)


def keys(problems: list[Problem]) -> list[str]:
    return [p.key for p in problems]


@pytest.fixture
def read_only_dir(tmp_path: Path):
    d = tmp_path / "ro"
    d.mkdir(mode=0o555)
    yield d
    d.chmod(0o755)  # so pytest can clean up


def test_missing_directories_the_agent_can_create_pass(tmp_path: Path) -> None:
    cfg = load(tmp_path, "")
    assert config.check_paths(cfg, as_service=True) == []
    assert config.check_paths(cfg, as_service=False) == []
    assert not (tmp_path / "state").exists()  # checking creates nothing


@pytest.mark.parametrize("as_service", [True, False])
def test_directory_under_proc_is_refused_even_for_root(tmp_path: Path, as_service: bool) -> None:
    cfg = load(tmp_path, "", socket="/proc/x/a.sock")
    problems = config.check_paths(cfg, as_service=as_service)
    assert problems == [Problem(str(tmp_path / "agent.toml"), "control.socket",
                                f"expected a directory user {config._user(os.geteuid())} can create; "
                                "/proc is mode 0555, owner root, so it cannot create x in it",
                                "/proc/x/a.sock")]


def test_a_file_in_the_way_is_refused(tmp_path: Path) -> None:
    (tmp_path / "plain").write_text("x")
    cfg = load(tmp_path, f'[checkin]\nseatplan = "{ROOT}/config/seatplan-room101.csv"\n'
                         f'record_dir = "{tmp_path}/plain/records"\njournal = "{tmp_path}/plain"\n')
    problems = config.check_paths(cfg, as_service=False)
    assert keys(problems) == ["checkin.record_dir"]  # the journal may be a file: it is one
    assert problems[0].message == f"expected a directory; {tmp_path}/plain is not one"
    assert problems[0].value == f"{tmp_path}/plain/records"


def test_spool_path_that_is_a_directory_is_refused(tmp_path: Path) -> None:
    (tmp_path / "state" / "spool.db").mkdir(parents=True)
    problems = config.check_paths(load(tmp_path, ""), as_service=True)
    assert problems == [Problem(str(tmp_path / "agent.toml"), "spool.path",
                                "expected a file name; it is a directory", f"{tmp_path}/state/spool.db")]


@pytest.mark.parametrize("as_service", [True, False])
def test_directory_nobody_may_write_is_refused(tmp_path: Path, read_only_dir: Path, as_service: bool) -> None:
    text = f'[[device]]\nkind = "camera"\nname = "cam"\nbackend = "sim"\nsnapshot_dir = "{read_only_dir}"\n'
    problems = config.check_paths(load(tmp_path, text), as_service=as_service)
    assert keys(problems) == ["device[0].snapshot_dir"]
    assert problems[0].message == (f"expected a directory user {config._user(os.geteuid())} can write in; "
                                   f"{read_only_dir} is mode 0555, owner {config._user(os.geteuid())}")


def test_socket_path_longer_than_a_unix_socket_holds(tmp_path: Path) -> None:
    long_dir = tmp_path / ("d" * (config.SOCKET_PATH_MAX - len(str(tmp_path))))
    cfg = load(tmp_path, "", socket=f"{long_dir}/a.sock")
    problems = config.check_paths(cfg, as_service=True)
    assert keys(problems) == ["control.socket"]
    assert problems[0].message == "expected a path of at most 107 bytes (a Unix socket's limit)"
    assert config.check_paths(load(tmp_path, "", socket=f"{tmp_path}/a.sock"), as_service=True) == []


def test_directories_systemd_creates_may_be_missing_for_check_config_only(
        tmp_path: Path, read_only_dir: Path, monkeypatch) -> None:
    """Before the first start nobody has made /var/lib/examroom or /run/examroom: check-config
    (run as root before install) accepts them, run (the service, after systemd made them) does not."""
    managed = read_only_dir / "examroom"
    monkeypatch.setattr(config, "MANAGED_DIRS", (managed,))
    text = (f'[checkin]\nseatplan = "{ROOT}/config/seatplan-room101.csv"\n'
            f'record_dir = "{managed}/records"\njournal = "{managed}/checkin.journal"\n')
    cfg = load(tmp_path, text)
    assert config.check_paths(cfg, as_service=False) == []
    assert keys(config.check_paths(cfg, as_service=True)) == ["checkin.record_dir", "checkin.journal"]


def test_managed_dirs_are_the_units_state_and_runtime_directories() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read(UNIT)
    service = unit["Service"]
    assert config.MANAGED_DIRS == (Path("/var/lib") / service["StateDirectory"],
                                   Path("/run") / service["RuntimeDirectory"])


@ROOT_ONLY
def test_directory_of_another_user_judged_by_its_owner_in_check_config(tmp_path: Path) -> None:
    """A technician or root runs check-config on a box where /var/lib/examroom is the
    service user's (0750): that is the service's to write. run, as the same user, refuses."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 4242, 4242)
    cfg = load(tmp_path, "")
    assert config.check_paths(cfg, as_service=False) == []
    problems = config.check_paths(cfg, as_service=True)
    assert keys(problems) == ["spool.path"]
    assert problems[0].message == ("expected a directory user root can write in; "
                                   f"{state} is mode 0700, owner {config._user(4242)}")
    state.chmod(0o500)  # not even its owner may write: refused for everyone
    assert keys(config.check_paths(cfg, as_service=False)) == ["spool.path"]


def test_cli_check_config_and_run_report_a_bad_path_with_exit_2(tmp_path: Path) -> None:
    load(tmp_path, "", socket="/proc/x/a.sock")
    p = tmp_path / "agent.toml"
    for cmd in (["check-config", str(p)], ["run", "--config", str(p)]):
        r = subprocess.run([sys.executable, "-m", "examroom.agent.cli", *cmd], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 2, r.stderr
        assert r.stderr.startswith(f"error: {p}: control.socket: expected a directory user ")
        assert r.stderr.endswith("(got '/proc/x/a.sock')\n") and r.stderr.count("\n") == 1
    assert not (tmp_path / "state").exists()  # run opened nothing: no spool, no lock
