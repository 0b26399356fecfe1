"""The CLI's side of the control socket against daemons that misbehave: real Unix socket
servers that hang, trickle, hang up or talk nonsense. Each gives one clear error (exit 1 in
the CLI), never a traceback and never a CLI that waits for ever."""
from __future__ import annotations

import json
import select
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable, Iterator

import pytest

from examroom.agent.control import AgentNotAnswering, AgentNotRunning, ControlServer, call
from examroom.agent.instance import AlreadyRunning

ROOT = Path(__file__).resolve().parent.parent
Behaviour = Callable[[socket.socket, threading.Event], None]


class FakeDaemon:
    """Listens on ``path`` and handles every connection with ``behaviour`` in a thread."""

    def __init__(self, path: Path, behaviour: Behaviour) -> None:
        self.path = str(path)
        self.behaviour = behaviour
        self.done = threading.Event()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(8)
        self.conns: list[socket.socket] = []
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed by stop()
            self.conns.append(conn)
            threading.Thread(target=self.behaviour, args=(conn, self.done), daemon=True).start()

    def stop(self) -> None:
        self.done.set()
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for c in self.conns:
            c.close()


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Callable[[Behaviour], FakeDaemon]]:
    made: list[FakeDaemon] = []

    def make(behaviour: Behaviour) -> FakeDaemon:
        made.append(FakeDaemon(tmp_path / "agent.sock", behaviour))
        return made[-1]

    yield make
    for d in made:
        d.stop()


def never_answers(conn: socket.socket, done: threading.Event) -> None:
    try:
        conn.recv(65536)
    except OSError:
        return  # stop() closed the connection before this thread read it: nothing to answer
    done.wait()


def closes_at_once(conn: socket.socket, _done: threading.Event) -> None:
    conn.close()


def resets_after_request(conn: socket.socket, _done: threading.Event) -> None:
    """Closing a Unix socket with the request unread resets the peer (ECONNRESET), as a
    daemon that crashes while a request waits does."""
    select.select([conn], [], [], 10)
    conn.close()


def trickles(conn: socket.socket, done: threading.Event) -> None:
    """A byte every 50 ms, never a newline: a per-read timeout would never fire."""
    conn.recv(65536)
    while not done.wait(0.05):
        try:
            conn.send(b" ")
        except OSError:
            return


def answers(payload: bytes) -> Behaviour:
    def behaviour(conn: socket.socket, _done: threading.Event) -> None:
        conn.recv(65536)
        conn.sendall(payload)
        conn.close()
    return behaviour


def test_hung_daemon_times_out_with_a_clear_message(daemon) -> None:
    d = daemon(never_answers)
    t0 = time.monotonic()
    with pytest.raises(AgentNotAnswering) as ei:
        call(d.path, "status", timeout=0.3)
    assert time.monotonic() - t0 < 5
    assert str(ei.value) == (f"the agent on {d.path} did not answer 'status' within 0.3 s: hung or busy? "
                             "(journalctl -u examroom-agent)")
    assert not isinstance(ei.value, AgentNotRunning)  # something is there: not to be replaced


def test_trickling_daemon_is_held_to_the_whole_timeout(daemon) -> None:
    d = daemon(trickles)
    t0 = time.monotonic()
    with pytest.raises(AgentNotAnswering, match="did not answer 'ping' within 0.4 s"):
        call(d.path, "ping", timeout=0.4)
    assert time.monotonic() - t0 < 3


@pytest.mark.parametrize("behaviour, message", [
    (closes_at_once, "closed the connection without answering 'ping'|dropped the connection during 'ping'"),
    (resets_after_request, "dropped the connection during 'ping' \\(Connection reset by peer\\)"),
    (answers(b'{"ok": true, "pong"'), "gave no whole JSON answer to 'ping' \\(19 bytes\\)"),
    (answers(b"<html>hello</html>\n"), "gave no whole JSON answer to 'ping'"),
    (answers(b"\xff\xfe\n"), "gave no whole JSON answer to 'ping'"),
    (answers(b"[1, 2]\n"), "answered 'ping' with list, not a JSON object"),
])
def test_daemon_that_hangs_up_or_talks_nonsense(daemon, behaviour: Behaviour, message: str) -> None:
    d = daemon(behaviour)
    with pytest.raises(AgentNotAnswering, match=message):
        call(d.path, "ping", timeout=5)


def test_server_refuses_the_socket_of_a_hung_daemon(daemon) -> None:
    d = daemon(never_answers)
    with pytest.raises(AlreadyRunning, match="listens on .* but does not answer"):
        ControlServer(d.path, {}).start()
    assert Path(d.path).is_socket()  # the hung daemon keeps its socket


def write_config(tmp_path: Path, sock: str) -> Path:
    p = tmp_path / "agent.toml"
    p.write_text(f'schema_version = 1\n[site]\nid = "site01"\n[room]\nid = "room101"\n'
                 f'[control]\nsocket = "{sock}"\n', encoding="utf-8")
    return p


@pytest.mark.parametrize("behaviour, expected", [
    (never_answers, "did not answer 'status' within 0.5 s"),
    (resets_after_request, "dropped the connection during 'status'"),
    (answers(b"garbage\n"), "gave no whole JSON answer to 'status'"),
])
def test_cli_status_on_a_broken_daemon_is_one_line_exit_1(daemon, tmp_path: Path, behaviour, expected) -> None:
    d = daemon(behaviour)
    r = subprocess.run([sys.executable, "-m", "examroom.agent.cli", "status", "--timeout", "0.5",
                        "-c", str(write_config(tmp_path, d.path))],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr.startswith(f"error: the agent on {d.path} ") and expected in r.stderr
    assert r.stderr.count("\n") == 1, r.stderr


def test_cli_note_to_a_daemon_that_answers_is_unchanged(daemon, tmp_path: Path) -> None:
    """The control path still works end to end when the daemon behaves."""
    d = daemon(answers(json.dumps({"ok": True, "seq": 7}).encode() + b"\n"))
    r = subprocess.run([sys.executable, "-m", "examroom.agent.cli", "note", "-c", str(write_config(tmp_path, d.path)),
                        "clock", "checked"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert (r.returncode, r.stdout, r.stderr) == (0, "note recorded as event seq 7\n", "")
