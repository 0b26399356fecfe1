"""The local control socket: how the CLI talks to the running daemon.

The daemon is the only process that owns the hardware, so every CLI action
that touches it goes through here. One JSON object per line each way:
``{"cmd": "note", "args": {...}}`` -> ``{"ok": true, ...}`` or
``{"ok": false, "error": "..."}``. A bad request gets an error reply, never a
crash of the daemon. The socket is mode 0660 so an ``examroom`` group can use it.
"""
from __future__ import annotations

import json
import logging
import os
import pwd
import socket
import socketserver
import stat
import struct
import threading
import time
from pathlib import Path
from typing import Any, Callable

from examroom.agent.instance import AlreadyRunning, StartFailed

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 64 * 1024
MAX_REPLY = 16 * 1024 * 1024  # a status is a few kB; more than this is not our daemon talking
IDLE_TIMEOUT_S = 60.0  # a connection that sends nothing this long is closed
CONNECT_RETRY_S = 2.0  # the CLI retries a connection this long while the daemon's backlog is full


class RequestError(ValueError):
    """The request is wrong; the message goes back to the caller as is."""


class AgentUnreachable(ConnectionError):
    """The CLI could not get an answer from the daemon (CLI exit 1)."""


class AgentNotRunning(AgentUnreachable):
    """Nothing listens on the socket: no daemon, or a stale socket a dead one left."""


class AgentNotAnswering(AgentUnreachable):
    """Something listens but gives no usable answer: a hung or overloaded daemon, or not
    ours. Never taken for "not running": its socket is not to be taken over."""


CALLER = "_caller"  # the argument the server sets to who is asking; a client cannot set it


def dispatch(handlers: dict[str, Handler], line: bytes, caller: str = "unknown") -> dict[str, Any]:
    """Run one request line; every failure becomes an error reply, never an exception.
    ``caller`` (the Unix user on the control socket, the site over MQTT) reaches the handler
    as ``args["_caller"]``, whatever the request said there."""
    try:
        req = json.loads(line)
        if not isinstance(req, dict) or not isinstance(req.get("cmd"), str):
            raise RequestError('expected {"cmd": "...", "args": {...}}')
        handler = handlers.get(req["cmd"])
        if handler is None:
            raise RequestError(f"unknown command {req['cmd']!r}; known: {', '.join(sorted(handlers))}")
        args = req.get("args") or {}
        if not isinstance(args, dict):
            raise RequestError("args must be an object")
        return {"ok": True, **handler({**args, CALLER: caller})}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"ok": False, "error": "request is not JSON"}
    except OSError as e:  # a full disk, absent hardware: the OS's words are the answer
        return {"ok": False, "error": e.strerror if isinstance(e.strerror, str) and e.strerror else str(e)}
    except (ValueError, LookupError, TypeError) as e:  # RequestError, driver errors, bad lookups
        # KeyError's str() is the repr of its key; any other message goes back untouched
        msg = str(e.args[0]) if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
        return {"ok": False, "error": msg or type(e).__name__}
    except Exception as e:  # a handler bug must not take the daemon down
        log.exception("control command failed")
        return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}


class _Server(socketserver.ThreadingUnixStreamServer):
    # socketserver's default backlog of 5 refused 9 of 10 status calls in a burst (EAGAIN)
    request_queue_size = 128


def _encode(reply: dict[str, Any]) -> bytes:
    """One reply line, whatever the handler returned: text UTF-8 cannot carry (a lone
    surrogate echoed from an argument) goes \\u-escaped, and a reply that is not JSON
    becomes an error reply, so the caller always gets an answer."""
    try:
        out = json.dumps(reply, ensure_ascii=False)
    except (TypeError, ValueError) as e:  # a handler returned something not JSON
        log.error("control reply is not JSON: %s", e)
        out = json.dumps({"ok": False, "error": f"internal error: reply is not JSON: {e}"})
    try:
        return out.encode() + b"\n"
    except UnicodeEncodeError:
        return json.dumps(reply).encode() + b"\n"


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def check_free(self) -> None:
        """Raise AlreadyRunning if a daemon listens on our socket. The agent asks this before
        it opens anything (its spool lock does not see an agent on another spool), and
        ``start`` again, so that a live daemon's socket is never stolen.

        Alive is judged by connecting, not by an answer: a daemon busy with a burst of
        requests (its backlog full) or hung still owns its socket. Only a refused
        connection (nobody listening: a dead daemon's leftover) frees the path.
        """
        if not os.path.lexists(self.path):
            return
        if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
            raise StartFailed(f"{self.path} exists and is not a socket: not removed; "
                              "move it away or set [control] socket to another path")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            try:
                s.connect(self.path)
            except ConnectionRefusedError:
                return  # a stale socket a dead daemon left: start() replaces it
            except (BlockingIOError, TimeoutError):  # listening, backlog full: busy, not dead
                raise AlreadyRunning(f"an examroom agent listens on {self.path} but is too busy to take "
                                     "a connection: another agent already runs there") from None
            except OSError as e:
                raise StartFailed(f"cannot check the control socket {self.path}: {e.strerror or e}") from None
        try:  # it is alive; the ping only chooses the words
            call(self.path, "ping", timeout=1.0)
        except AgentNotRunning:
            return  # it died between the two looks: its socket is stale now
        except AgentNotAnswering:
            raise AlreadyRunning(f"an examroom agent (pid {_listener_pid(self.path)}) listens on "
                                 f"{self.path} but does not answer: hung? stop it first") from None
        raise AlreadyRunning(f"another examroom agent (pid {_listener_pid(self.path)}) is already "
                             f"running on {self.path}")

    def start(self) -> None:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.check_free()
        if os.path.lexists(path):
            path.unlink()
        outer = self

        class _Handler(socketserver.StreamRequestHandler):
            timeout = IDLE_TIMEOUT_S  # an idle client must not hold a thread for ever

            def handle(self) -> None:
                caller = peer_user(self.request)
                while True:
                    try:
                        line = self.rfile.readline(MAX_REQUEST)
                    except TimeoutError:
                        return
                    if not line:
                        return
                    self.wfile.write(_encode(dispatch(outer.handlers, line, caller)))

        old = os.umask(0o117)
        try:
            server = _Server(str(path), _Handler)
        finally:
            os.umask(old)
        server.daemon_threads = True
        os.chmod(path, 0o660)
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, name="control", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._server is None:
            return
        self._server.shutdown()
        self._server.server_close()
        self._server = None
        try:
            Path(self.path).unlink()
        except FileNotFoundError:
            pass


def peer_user(sock: socket.socket) -> str:
    """Who is on the other end of a Unix socket, as the kernel says (SO_PEERCRED): the user
    name, or ``uid N`` for a uid without one. Decisions are recorded with it."""
    try:
        _pid, uid, _gid = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                              struct.calcsize("3i")))
    except OSError:
        return "unknown"
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _listener_pid(path: str) -> str:
    """The pid of the process listening on ``path`` (SO_PEERCRED), for the message only."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(path)
            pid, _uid, _gid = struct.unpack("3i", s.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED,
                                                                struct.calcsize("3i")))
            return str(pid)
    except OSError:
        return "unknown"


def _connect(s: socket.socket, path: str, deadline: float) -> None:
    """Connect, retrying briefly while the daemon's listen backlog is full (EAGAIN on a Unix
    socket): a burst of status calls from a monitoring script must not fail outright."""
    give_up = min(deadline, time.monotonic() + CONNECT_RETRY_S)
    pause = 0.005
    while True:
        try:
            s.connect(path)
            return
        except BlockingIOError:
            if time.monotonic() + pause > give_up:
                raise TimeoutError from None
            time.sleep(pause)  # nothing to wait on: the kernel does not say when a slot frees
            pause = min(pause * 2, 0.1)


def call(path: str, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Send one command to the daemon and return its reply object.

    Raises AgentNotRunning when nothing listens, AgentNotAnswering when something does but
    no whole JSON reply comes within ``timeout`` seconds (all of it, not per read: a daemon
    that trickles bytes does not hold the CLI for ever) or the connection is dropped."""
    deadline = time.monotonic() + timeout
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    with s:
        s.settimeout(timeout)
        try:
            _connect(s, path, deadline)
        except (FileNotFoundError, ConnectionRefusedError):
            raise AgentNotRunning(f"the agent is not running (no daemon listening on {path})") from None
        except PermissionError:
            raise AgentNotRunning(f"permission denied on {path}: run as root or join the socket's group") from None
        except TimeoutError:  # its listen backlog is full: the daemon accepts nothing
            raise AgentNotAnswering(f"the agent on {path} did not take the connection within "
                                    f"{timeout:g} s: hung or overloaded?") from None
        except OSError as e:
            raise AgentNotRunning(f"cannot reach the agent on {path}: {e.strerror or e}") from None
        data = b""
        try:
            s.sendall(_encode({"cmd": cmd, "args": args}))
            while not data.endswith(b"\n") and len(data) <= MAX_REPLY:
                s.settimeout(max(deadline - time.monotonic(), 0.001))
                chunk = s.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            raise AgentNotAnswering(f"the agent on {path} did not answer {cmd!r} within {timeout:g} s: "
                                    "hung or busy? (journalctl -u examroom-agent)") from None
        except OSError as e:  # reset, broken pipe: it went away mid-request
            raise AgentNotAnswering(f"the agent on {path} dropped the connection during {cmd!r} "
                                    f"({e.strerror or type(e).__name__})") from None
    if not data:
        raise AgentNotAnswering(f"the agent on {path} closed the connection without answering {cmd!r}")
    try:
        if not data.endswith(b"\n"):
            raise ValueError("cut short")
        reply = json.loads(data)
    except ValueError:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise AgentNotAnswering(f"the agent on {path} gave no whole JSON answer to {cmd!r} "
                                f"({len(data)} bytes)") from None
    if not isinstance(reply, dict):
        raise AgentNotAnswering(f"the agent on {path} answered {cmd!r} with {type(reply).__name__}, "
                                "not a JSON object")
    return reply
