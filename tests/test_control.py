"""The control socket: one JSON line each way; a bad request gets an error reply, never a dead daemon."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest

from examroom.agent.commands import WHERE, Commands
from examroom.agent.exam_lock import ExamLock
from examroom.agent.photos import Photos
from examroom.agent.trial_reports import TrialReports
from examroom.agent.config import DeviceConfig
from examroom.agent import control
from examroom.agent.control import AgentNotAnswering, AgentNotRunning, ControlServer, call, dispatch
from examroom.agent.instance import AlreadyRunning, StartFailed
from examroom.agent.devices import Devices
from examroom.agent.metrics import Metrics
from examroom.drivers.bus import Bus
from examroom.drivers.events import CardPresented

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sockdir():
    # AF_UNIX paths are limited to ~107 bytes: pytest's tmp_path can be longer
    d = tempfile.mkdtemp(prefix="ctl", dir="/tmp")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def _boom(args):
    raise RuntimeError("bug in handler")


def _bad_value(args):
    raise ValueError("no such device 'x'")


def _missing(args):
    return {"v": {}["nope"]}


HANDLERS = {
    "ping": lambda args: {"pong": True},
    "echo": lambda args: {"args": args},
    "boom": _boom,
    "bad": _bad_value,
    "missing": _missing,
    "unserialisable": lambda args: {"path": object()},
}


@pytest.fixture
def server(sockdir: Path):
    srv = ControlServer(str(sockdir / "agent.sock"), dict(HANDLERS))
    srv.start()
    yield srv
    srv.stop()


class Client:
    """A raw line client, to send what call() never would."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(path)
        self.r = self.sock.makefile("rb")

    def send(self, raw: bytes) -> dict:
        self.sock.sendall(raw)
        line = self.r.readline()
        assert line.endswith(b"\n"), line
        return json.loads(line)

    def close(self) -> None:
        self.r.close()
        self.sock.close()


@pytest.fixture
def client(server: ControlServer):
    c = Client(server.path)
    yield c
    c.close()


# -- dispatch ---------------------------------------------------------------------------------

def test_dispatch_without_a_socket() -> None:
    assert dispatch(HANDLERS, b'{"cmd": "ping"}\n') == {"ok": True, "pong": True}
    assert dispatch(HANDLERS, b'{"cmd": "echo", "args": {"a": 1}}') == {"ok": True, "args": {"a": 1, "_caller": "unknown"}}
    assert dispatch(HANDLERS, b'{"cmd": "echo", "args": null}', "alice") == {"ok": True, "args": {"_caller": "alice"}}
    # who is asking is the server's to say, never the request's
    assert dispatch(HANDLERS, b'{"cmd": "echo", "args": {"_caller": "root"}}', "mallory")["args"] == {"_caller": "mallory"}
    assert dispatch(HANDLERS, b"\xff\xfe") == {"ok": False, "error": "request is not JSON"}
    assert dispatch(HANDLERS, b"[1, 2]")["error"].startswith("expected {")
    assert dispatch(HANDLERS, b'{"cmd": 5}')["error"].startswith("expected {")
    assert dispatch(HANDLERS, b'{"cmd": "missing"}') == {"ok": False, "error": "nope"}


# -- over the socket ----------------------------------------------------------------------------

def test_ok_reply(server: ControlServer) -> None:
    assert call(server.path, "ping") == {"ok": True, "pong": True}
    me = pwd.getpwuid(os.getuid()).pw_name  # the kernel's word for who is on the socket (SO_PEERCRED)
    assert call(server.path, "echo", text="考场 note", n=3) == {"ok": True, "args": {"text": "考场 note", "n": 3,
                                                                                      "_caller": me}}


def test_unknown_command_lists_known(server: ControlServer) -> None:
    r = call(server.path, "reboot")
    assert r["ok"] is False
    assert "unknown command 'reboot'" in r["error"]
    for known in HANDLERS:
        assert known in r["error"]


def test_non_json_line_then_server_still_serves(client: Client) -> None:
    r = client.send(b"this is not json\n")
    assert r == {"ok": False, "error": "request is not JSON"}
    r = client.send(b"\xff\xfe\n")
    assert r == {"ok": False, "error": "request is not JSON"}
    # same connection, next request
    assert client.send(b'{"cmd": "ping"}\n') == {"ok": True, "pong": True}


def test_several_requests_on_one_connection(client: Client) -> None:
    for i in range(5):
        assert client.send(json.dumps({"cmd": "echo", "args": {"i": i}}).encode() + b"\n")["args"]["i"] == i


def test_args_not_an_object(client: Client) -> None:
    for args in ("[1, 2]", '"text"', "5"):
        r = client.send(f'{{"cmd": "echo", "args": {args}}}\n'.encode())
        assert r == {"ok": False, "error": "args must be an object"}


def test_request_not_an_object(client: Client) -> None:
    r = client.send(b'["ping"]\n')
    assert r["ok"] is False and '"cmd"' in r["error"]
    r = client.send(b'{"args": {}}\n')
    assert r["ok"] is False and '"cmd"' in r["error"]


def test_handler_runtime_error_is_internal_error_and_server_survives(server: ControlServer, caplog) -> None:
    r = call(server.path, "boom")
    assert r["ok"] is False
    assert r["error"] == "internal error: RuntimeError: bug in handler"
    assert "control command failed" in caplog.text  # logged with its traceback for the sysadmin
    assert call(server.path, "ping") == {"ok": True, "pong": True}


def test_handler_value_error_message_goes_back(server: ControlServer) -> None:
    assert call(server.path, "bad") == {"ok": False, "error": "no such device 'x'"}
    assert call(server.path, "ping")["ok"] is True


def test_unserialisable_reply_is_an_error_reply(server: ControlServer) -> None:
    r = call(server.path, "unserialisable")
    assert r["ok"] is False and r["error"].startswith("internal error")
    assert call(server.path, "ping")["ok"] is True


def test_clients_served_concurrently(sockdir: Path) -> None:
    entered, release = threading.Event(), threading.Event()

    def slow(args):
        entered.set()
        assert release.wait(10)
        return {"slow": True}

    srv = ControlServer(str(sockdir / "a.sock"), {"slow": slow, "ping": lambda a: {}})
    srv.start()
    try:
        result: dict = {}
        t = threading.Thread(target=lambda: result.update(call(srv.path, "slow", timeout=10)))
        t.start()
        assert entered.wait(10)
        # a slow command does not block another client
        assert call(srv.path, "ping", timeout=10) == {"ok": True}
        release.set()
        t.join(10)
        assert result == {"ok": True, "slow": True}
    finally:
        release.set()
        srv.stop()


def test_socket_mode_0660(server: ControlServer) -> None:
    st = os.stat(server.path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


def test_stop_removes_socket(sockdir: Path) -> None:
    srv = ControlServer(str(sockdir / "x" / "agent.sock"), dict(HANDLERS))  # parent dir made
    srv.start()
    assert Path(srv.path).exists()
    srv.stop()
    assert not Path(srv.path).exists()
    srv.stop()  # idempotent
    with pytest.raises(AgentNotRunning):
        call(srv.path, "ping")


# -- not running, already running, stale ----------------------------------------------------------

def test_call_missing_socket_raises_agent_not_running(sockdir: Path) -> None:
    path = str(sockdir / "absent.sock")
    with pytest.raises(AgentNotRunning) as ei:
        call(path, "status")
    assert "the agent is not running" in str(ei.value)
    assert path in str(ei.value)
    assert isinstance(ei.value, ConnectionError)


def stale_socket(path: Path) -> None:
    """A socket file with nobody listening: what a SIGKILLed daemon leaves behind."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()
    assert stat.S_ISSOCK(os.stat(path).st_mode)


def test_call_stale_socket_raises_agent_not_running(sockdir: Path) -> None:
    path = sockdir / "stale.sock"
    stale_socket(path)
    with pytest.raises(AgentNotRunning, match="the agent is not running"):
        call(str(path), "status")


def test_second_server_on_live_socket_refuses(server: ControlServer) -> None:
    second = ControlServer(server.path, {"ping": lambda a: {"second": True}})
    with pytest.raises(RuntimeError, match="already running"):
        second.start()
    # the first daemon keeps its socket and keeps serving
    assert call(server.path, "ping") == {"ok": True, "pong": True}
    assert stat.S_ISSOCK(os.stat(server.path).st_mode)


def test_stale_socket_is_replaced(sockdir: Path) -> None:
    path = sockdir / "agent.sock"
    stale_socket(path)
    with pytest.raises(AgentNotRunning):
        call(str(path), "ping")
    srv = ControlServer(str(path), dict(HANDLERS))
    srv.start()
    try:
        assert call(str(path), "ping") == {"ok": True, "pong": True}
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o660
    finally:
        srv.stop()


# -- the CLI without a daemon ---------------------------------------------------------------------

@pytest.fixture
def config_without_daemon(tmp_path: Path, sockdir: Path) -> tuple[Path, Path]:
    sock = sockdir / "agent.sock"
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f"""
schema_version = 1
[site]
id = "site01"
[room]
id = "room101"
[control]
socket = "{sock}"
[spool]
path = "{tmp_path}/spool.db"
""", encoding="utf-8")
    return cfg, sock


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "examroom.agent.cli", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("argv", [["status"], ["status", "--json"], ["note", "candidate", "left", "early"]])
def test_cli_without_daemon_exits_1(config_without_daemon, argv) -> None:
    cfg, sock = config_without_daemon
    r = run_cli(argv[0], "--config", str(cfg), *argv[1:])
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert r.stdout == ""
    assert r.stderr.startswith("error: the agent is not running")
    assert str(sock) in r.stderr
    assert "Traceback" not in r.stderr


def test_cli_with_stale_socket_exits_1(config_without_daemon) -> None:
    cfg, sock = config_without_daemon
    stale_socket(sock)
    r = run_cli("note", "--config", str(cfg), "hello")
    assert r.returncode == 1
    assert "the agent is not running" in r.stderr


def test_cli_note_reaches_daemon(config_without_daemon) -> None:
    cfg, sock = config_without_daemon
    got: list[dict] = []

    def note(args):
        got.append(args)
        return {"seq": 42}

    srv = ControlServer(str(sock), {"note": note})
    srv.start()
    try:
        r = run_cli("note", "--config", str(cfg), "--author", "proctor1", "seat", "12", "empty")
    finally:
        srv.stop()
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "note recorded as event seq 42"
    assert got == [{"text": "seat 12 empty", "author": "proctor1", "_caller": pwd.getpwuid(os.getuid()).pw_name}]


def test_cli_error_reply_exits_1(config_without_daemon) -> None:
    cfg, sock = config_without_daemon
    srv = ControlServer(str(sock), {"note": _bad_value})
    srv.start()
    try:
        r = run_cli("note", "--config", str(cfg), "x")
    finally:
        srv.stop()
    assert r.returncode == 1
    assert r.stderr.strip() == "error: no such device 'x'"


# -- `sim card` routing: an ID number to the ID reader, a UID to PC/SC ---------------------------

@pytest.fixture
def sim_devices():
    devices = Devices((DeviceConfig("idcard", "idreader", "sim", {"poll_interval_s": 0.02}),
                       DeviceConfig("pcsc", "campus", "sim", {})), Bus(), Metrics())
    devices.start()
    yield devices
    devices.stop()


@pytest.mark.parametrize("word,device", [
    ("11010519491231002X", "idreader"),
    ("11010519491231002x", "idreader"),
    ("110105194912310021", "idreader"),   # wrong check digit: still an ID card (an invalid_id verdict)
    ("04A1B2C3D4E5F60718", "campus"),     # 9-byte UID: 18 hex digits, as long as an ID number
    ("04a1b2c3d4e5f607", "campus"),       # 8-byte UID
    ("04A1B2C3", "campus"),
])
def test_sim_card_routes_by_what_the_word_is_not_its_length(sockdir: Path, sim_devices, word: str,
                                                            device: str) -> None:
    seen: list[CardPresented] = []
    cond = threading.Condition()

    def on_card(ev: CardPresented) -> None:
        with cond:
            seen.append(ev)
            cond.notify_all()

    sim_devices.bus.subscribe(CardPresented, on_card)
    commands = Commands(emit=lambda k, d: None, devices=sim_devices, status=dict, scrub=str,
                        lock=ExamLock(None, time.time, lambda k, d: None, str), station=lambda: None,
                        photos=Photos(sim_devices, lambda k, d: None, []),
                        trials=TrialReports(sockdir, "room101", lambda k, d: None, time.time, lambda i: None,
                                            ZoneInfo("Asia/Shanghai")),
                        extra={n: lambda a: {} for n in WHERE if n != "sim"})  # only sim is under test
    srv = ControlServer(str(sockdir / "agent.sock"), commands.table)
    srv.start()
    try:
        reply = call(srv.path, "sim", words=["card", word])
        assert reply["ok"] and reply["device"] == device, reply
        with cond:
            assert cond.wait_for(lambda: seen, 5.0)
        [ev] = seen
        assert ev.device == device
        if device == "campus":
            assert ev.uid == word.upper() and ev.identity is None
        else:
            assert ev.identity is not None and ev.identity.id_number == word.upper()
    finally:
        srv.stop()


# -- a busy daemon, odd replies, idle clients (fault campaign) -------------------------------------

def _busy_listener(path: Path) -> tuple[socket.socket, list[socket.socket]]:
    """A socket that listens but never accepts, its backlog filled: a daemon swamped by a burst."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(0)
    queued = []
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.setblocking(False)
        try:
            s.connect(str(path))
        except BlockingIOError:
            s.close()
            return listener, queued
        queued.append(s)


def test_a_busy_daemons_socket_is_never_taken_over(sockdir: Path) -> None:
    path = sockdir / "agent.sock"
    listener, queued = _busy_listener(path)
    try:
        with pytest.raises(AlreadyRunning, match="busy"):
            ControlServer(str(path), dict(HANDLERS)).start()
        assert stat.S_ISSOCK(os.lstat(path).st_mode)
        with pytest.raises(AgentNotAnswering):  # the CLI says busy or hung, never "not running"
            call(str(path), "status", timeout=0.3)
    finally:
        for s in queued:
            s.close()
        listener.close()


def test_the_cli_waits_out_a_full_backlog(sockdir: Path) -> None:
    path = sockdir / "agent.sock"
    listener, queued = _busy_listener(path)
    result: list[dict] = []
    caller = threading.Thread(target=lambda: result.append(call(str(path), "ping", timeout=10)))
    caller.start()
    try:
        time.sleep(0.2)  # the caller meets the full backlog first (nothing to wait on: it retries blindly)
        for s in queued:
            s.close()
        listener.settimeout(5)
        while True:  # the queued ones first (already closed by their side), then the caller
            conn, _ = listener.accept()
            line = conn.makefile("rb").readline()
            if line:
                conn.sendall(b'{"ok": true, "pong": true}\n')
                conn.close()
                break
            conn.close()
        caller.join(10)
        assert result == [{"ok": True, "pong": True}]
    finally:
        listener.close()


def test_many_clients_at_once_all_get_answers(server: ControlServer) -> None:
    replies: list[dict] = []
    threads = [threading.Thread(target=lambda: replies.append(call(server.path, "ping"))) for _ in range(60)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert replies == [{"ok": True, "pong": True}] * 60


def test_a_regular_file_at_the_socket_path_is_not_deleted(sockdir: Path) -> None:
    path = sockdir / "agent.sock"
    path.write_text("someone's notes")
    with pytest.raises(StartFailed, match="not a socket"):
        ControlServer(str(path), dict(HANDLERS)).start()
    assert path.read_text() == "someone's notes"


def test_a_reply_utf8_cannot_carry_still_goes_back(server: ControlServer) -> None:
    reply = call(server.path, "echo", text="\ud800 lone")
    assert reply["ok"] is True and reply["args"]["text"] == "\ud800 lone"  # \u-escaped on the wire


def test_an_idle_connection_is_closed(sockdir: Path, monkeypatch) -> None:
    monkeypatch.setattr(control, "IDLE_TIMEOUT_S", 0.2)
    srv = ControlServer(str(sockdir / "agent.sock"), dict(HANDLERS))
    srv.start()
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(srv.path)
            s.settimeout(5)
            assert s.recv(1) == b""  # closed by the daemon, not by our 5 s timeout
        assert call(srv.path, "ping") == {"ok": True, "pong": True}
    finally:
        srv.stop()


def test_the_cli_refuses_a_socket_not_owned_by_the_service_user(config_without_daemon) -> None:
    """A proctor's decision must not go to a socket another local user put in the agent's place."""
    cfg, sock = config_without_daemon
    cfg.write_text(cfg.read_text().replace("[control]\n", '[control]\nservice_user = "nobody"\n'), encoding="utf-8")
    srv = ControlServer(str(sock), {"note": lambda a: {"seq": 1}})
    srv.start()
    try:
        assert run_cli("note", "--config", str(cfg), "hello").returncode == 0  # root's socket: trusted
        os.chown(sock, 54321, -1)  # now someone else's
        r = run_cli("note", "--config", str(cfg), "hello")
        assert r.returncode == 1 and "not by the service user 'nobody'" in r.stderr, r.stderr
    finally:
        srv.stop()
