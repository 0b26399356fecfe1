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
import socket
import socketserver
import threading
from pathlib import Path
from typing import Any, Callable

log = logging.getLogger(__name__)

Handler = Callable[[dict[str, Any]], dict[str, Any]]
MAX_REQUEST = 64 * 1024


class RequestError(ValueError):
    """The request is wrong; the message goes back to the caller as is."""


class AgentNotRunning(ConnectionError):
    pass


def dispatch(handlers: dict[str, Handler], line: bytes) -> dict[str, Any]:
    """Run one request line; every failure becomes an error reply, never an exception."""
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
        return {"ok": True, **handler(args)}
    except (json.JSONDecodeError, UnicodeDecodeError):
        return {"ok": False, "error": "request is not JSON"}
    except (ValueError, LookupError, TypeError) as e:  # RequestError, driver errors, bad lookups
        # KeyError's str() is the repr of its key; any other message goes back untouched
        msg = str(e.args[0]) if isinstance(e, KeyError) and len(e.args) == 1 else str(e)
        return {"ok": False, "error": msg or type(e).__name__}
    except Exception as e:  # a handler bug must not take the daemon down
        log.exception("control command failed")
        return {"ok": False, "error": f"internal error: {type(e).__name__}: {e}"}


class ControlServer:
    def __init__(self, path: str, handlers: dict[str, Handler]) -> None:
        self.path = path
        self.handlers = handlers
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            try:  # refuse to steal the socket of a live daemon
                call(self.path, "ping", timeout=1.0)
                raise RuntimeError(f"another agent is already running on {self.path}")
            except AgentNotRunning:
                path.unlink()
        outer = self

        class _Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                while True:
                    line = self.rfile.readline(MAX_REQUEST)
                    if not line:
                        return
                    reply = dispatch(outer.handlers, line)
                    try:
                        out = json.dumps(reply, ensure_ascii=False)
                    except (TypeError, ValueError) as e:  # a handler returned something not JSON
                        log.error("control reply is not JSON: %s", e)
                        out = json.dumps({"ok": False, "error": f"internal error: reply is not JSON: {e}"})
                    self.wfile.write(out.encode() + b"\n")

        old = os.umask(0o117)
        try:
            server = socketserver.ThreadingUnixStreamServer(str(path), _Handler)
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


def call(path: str, cmd: str, timeout: float = 30.0, **args: Any) -> dict[str, Any]:
    """Send one command to the daemon; raises AgentNotRunning with a helpful message."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect(path)
    except (FileNotFoundError, ConnectionRefusedError):
        s.close()
        raise AgentNotRunning(f"the agent is not running (no daemon listening on {path})") from None
    except PermissionError:
        s.close()
        raise AgentNotRunning(f"permission denied on {path}: run as root or join the socket's group") from None
    with s:
        s.sendall(json.dumps({"cmd": cmd, "args": args}, ensure_ascii=False).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    if not data:
        raise AgentNotRunning(f"the agent closed the connection on {path}")
    return json.loads(data)
