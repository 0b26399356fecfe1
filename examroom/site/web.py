"""The site's live board: a small HTTP server in the aggregator, standard library only.

It runs on the site office's LAN, often with no Internet: no CDN, every file it
serves is in ``static/``. The browser gets a snapshot and then the changes over
server-sent events (``/api/stream``); it never talks to the broker. What it shows
comes from the aggregator's store, read beside the writer thread; the board's
own writes (an acknowledgement) go through ``store.batch()`` like the writer's.

Pages: ``/`` the whole site, ``/proctor?rooms=a,b`` and ``/proctor/{k}`` the
eight rooms of one video proctor, ``/room/{room}`` one room's timeline. The JSON
behind them is under ``/api/`` (docs/board.md).
"""
from __future__ import annotations

import html
import json
import logging
import re
import socket
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from examroom.contract.topics import BROADCAST, is_room_id
from examroom.site import web_api as api
from examroom.site.config import SiteConfig
from examroom.site.store import Store
from examroom.site.web_stream import HELLO, Hub, frame

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"
STATIC_NAME = re.compile(r"[a-z0-9_-]+\.(?:js|css|svg|png)")
CONTENT_TYPES = {"js": "text/javascript; charset=utf-8", "css": "text/css; charset=utf-8",
                 "svg": "image/svg+xml", "png": "image/png", "html": "text/html; charset=utf-8",
                 "json": "application/json; charset=utf-8"}
MAX_BODY = 64 * 1024
MAX_NAME = 80  # characters of the acknowledging person's name

StartJointTest = Callable[[list[str] | None], str]


class HttpError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class Board:
    """The board's server; ``start_jointtest(rooms or None) -> run id`` starts a joint test (None: not here)."""

    def __init__(self, cfg: SiteConfig, store: Store, start_jointtest: StartJointTest | None = None) -> None:
        self.cfg = cfg
        self.store = store
        self.start_jointtest = start_jointtest
        self.tz: str = cfg.site["timezone"]
        self.updates = api.Updates(store)
        self.hub = Hub(self.updates.update)
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopped = False

    def start(self) -> None:
        host, _, port = self.cfg.board["listen"].rpartition(":")
        self._server = _Server((host.strip("[]") or "127.0.0.1", int(port)), _Handler, self)
        self.hub.start()
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="board-http", daemon=True)
        self._thread.start()
        log.info("board on %s", self.url)

    def stop(self) -> None:
        """Close every stream, then the server; a second call does nothing."""
        if self._stopped:
            return
        self._stopped = True
        self.hub.stop()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the board is not started")
        host, port = self._server.server_address[:2]
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(str(host), str(host))
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/"

    def rooms_changed(self, rooms: set[str]) -> None:
        """The aggregator committed changes of these rooms: every open board gets them (never blocks)."""
        self.hub.changed(rooms)

    def boot(self, **extra: Any) -> dict[str, Any]:
        """What a page needs before its first data: the site's zone and name."""
        return {"tz": self.tz, "site": self.cfg.site.get("name") or self.cfg.site["id"]} | extra


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # an open event stream must not hold the aggregator's exit

    def __init__(self, addr: tuple[str, int], handler: type[BaseHTTPRequestHandler], board: Board) -> None:
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        self.board = board
        super().__init__(addr, handler)


# -- the routes ---------------------------------------------------------------------
def _room_ids(text: str) -> list[str]:
    ids = list(dict.fromkeys(r.strip() for r in text.split(",") if r.strip()))
    bad = [r for r in ids if not is_room_id(r)]
    if bad:
        raise HttpError(400, f"not a room id: {bad[0][:80]!r} (1-64 of A-Z a-z 0-9 _ -, not {BROADCAST!r})")
    return ids


def page_index(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    req.page("index.html", req.board.boot(page="site"))


def page_proctor(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    rooms = _room_ids(q.get("rooms", ""))
    if not 1 <= len(rooms) <= api.GROUP:
        raise HttpError(400, f"rooms=: 1 to {api.GROUP} room ids separated by commas, e.g. "
                             f"/proctor?rooms=room101,room102; or /proctor/1 for the first {api.GROUP} rooms")
    req.page("proctor.html", req.board.boot(page="proctor", rooms=rooms, title=", ".join(rooms)))


def page_proctor_group(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    groups, k = api.groups(req.board.store), int(m["k"])
    if not 1 <= k <= len(groups):
        raise HttpError(404, f"no group {k}: the site's {sum(map(len, groups))} rooms make {len(groups)} "
                             f"groups of {api.GROUP}, numbered from 1")
    req.page("proctor.html", req.board.boot(page="proctor", rooms=groups[k - 1], title=f"第 {k} 组"))


def page_room(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    if not any(r["room"] == m["room"] for r in req.board.store.rooms()):
        raise HttpError(404, f"no room {m['room']!r} on this site")
    req.page("room.html", req.board.boot(page="room", room=m["room"]))


def static_file(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    name = m["name"]
    if not STATIC_NAME.fullmatch(name) or not (STATIC / name).is_file():
        raise HttpError(404, f"no file {name[:80]!r}")
    req.send(200, (STATIC / name).read_bytes(), CONTENT_TYPES[name.rsplit(".", 1)[1]])


def api_rooms(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    req.json(200, {"now": time.time(), "tz": req.board.tz, "rooms": api.tiles(req.board.store),
                   "groups": api.groups(req.board.store)})


def api_room(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    detail = api.room_detail(req.board.store, m["room"])
    if detail is None:
        raise HttpError(404, f"no room {m['room']!r} on this site")
    req.json(200, {"now": time.time(), "tz": req.board.tz} | detail)


def api_alerts(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    req.json(200, {"alerts": req.board.store.alerts(unacked_or_open=True)})


def api_ack(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    body = req.body_json()
    by = body.get("by") if isinstance(body, dict) else None
    if not isinstance(by, str) or not by.strip():
        raise HttpError(400, 'who acknowledges is required: {"by": "your name"}')
    by = by.strip()
    if len(by) > MAX_NAME:
        raise HttpError(400, f"by: at most {MAX_NAME} characters")
    store, n = req.board.store, int(m["n"])
    alert = next((a for a in store.alerts() if a["n"] == n), None)
    if alert is None:
        raise HttpError(404, f"no alert {n}")
    now = time.time()
    with store.batch():
        done = store.ack_alert(n, by, now)
        if done:
            store.record("ack", {"alert": n, "room": alert["room"], "key": alert["key"], "by": by}, now)
    if not done:
        raise HttpError(409, f"alert {n} was already acknowledged by {alert['acked_by']}")
    req.board.rooms_changed({alert["room"]})
    req.json(200, {"alert": alert | {"acked_by": by, "acked_at": now}})


def api_pushes(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    req.json(200, {"pushes": api.pushes(req.board.store)})


def api_jointtest(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    req.json(200, {"latest": api.jointtest(req.board.store)})


def api_jointtest_start(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    start = req.board.start_jointtest
    if start is None:
        raise HttpError(503, "joint testing is not available here")
    body = req.body_json()
    if body is not None and not isinstance(body, dict):
        raise HttpError(400, 'expected a JSON object: {"rooms": ["room101", ...]} or nothing')
    rooms = (body or {}).get("rooms")
    if rooms is not None and not (isinstance(rooms, list) and all(isinstance(r, str) for r in rooms)):
        raise HttpError(400, "rooms: a list of room ids")
    if rooms and not all(is_room_id(r) for r in rooms):
        raise HttpError(400, f"rooms: room ids of 1-64 of A-Z a-z 0-9 _ -, not {BROADCAST!r}")
    try:
        run = start(rooms or None)
    except ValueError as e:
        raise HttpError(400, str(e)) from None
    except RuntimeError as e:  # one is running already
        raise HttpError(409, str(e)) from None
    req.board.rooms_changed(set())  # its first log entry is on every board at once
    req.json(202, {"run": run})


def api_stream(req: _Handler, m: re.Match, q: dict[str, str]) -> None:
    """The snapshot, then every update, until the browser leaves or the board stops."""
    board = req.board
    client = board.hub.connect()  # before the snapshot: a change in between comes twice, never not at all
    try:
        req.send_response(200)
        req.send_header("Content-Type", "text/event-stream; charset=utf-8")
        req.send_header("Cache-Control", "no-cache")
        req.send_header("X-Accel-Buffering", "no")
        req.end_headers()
        req.wfile.write(HELLO + frame("snapshot", api.snapshot(board.store, board.tz)))
        req.wfile.flush()
        while (data := client.next()) is not None:
            req.wfile.write(data)
            req.wfile.flush()
    finally:
        board.hub.disconnect(client)
        req.close_connection = True


Route = Callable[["_Handler", re.Match, dict[str, str]], None]
ROUTES: list[tuple[str, re.Pattern[str], Route]] = [(method, re.compile(pattern), fn) for method, pattern, fn in (
    ("GET", r"/", page_index),
    ("GET", r"/proctor", page_proctor),
    ("GET", r"/proctor/(?P<k>[0-9]{1,6})", page_proctor_group),
    ("GET", r"/room/(?P<room>[A-Za-z0-9_-]{1,64})", page_room),
    ("GET", r"/static/(?P<name>[^/]+)", static_file),
    ("GET", r"/api/rooms", api_rooms),
    ("GET", r"/api/rooms/(?P<room>[A-Za-z0-9_-]{1,64})", api_room),
    ("GET", r"/api/alerts", api_alerts),
    ("POST", r"/api/alerts/(?P<n>[0-9]{1,12})/ack", api_ack),
    ("GET", r"/api/pushes", api_pushes),
    ("GET", r"/api/jointtest", api_jointtest),
    ("POST", r"/api/jointtest", api_jointtest_start),
    ("GET", r"/api/stream", api_stream),
)]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "examroom-board"
    timeout = 30  # a client that opens a connection and sends nothing does not hold a thread for ever

    @property
    def board(self) -> Board:
        return self.server.board

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        try:
            query = {k: v[-1] for k, v in parse_qs(url.query).items()}
            fn, match = self._route(method, url.path)
            fn(self, match, query)
        except HttpError as e:
            self.error(e.status, e.message, url.path)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            self.close_connection = True  # the browser left
        except Exception:
            log.exception("board: %s %s failed", method, self.path[:200])
            self.error(500, "internal error (in the aggregator's log)", url.path)

    def _route(self, method: str, path: str) -> tuple[Route, re.Match]:
        allowed = []
        for m, pattern, fn in ROUTES:
            match = pattern.fullmatch(path)
            if match and m == method:
                return fn, match
            if match:
                allowed.append(m)
        if allowed:
            raise HttpError(405, f"{method} not allowed here (use {', '.join(allowed)})")
        raise HttpError(404, f"no such page: {path[:200]}")

    def body_json(self) -> Any:
        """The request's JSON body, None when there is none; a bad one is the client's error (400).
        Every POST reads its body here, so this is where another site's page is turned away: a
        browser sends ``Origin`` with a cross-origin POST, and a page elsewhere must not start a
        joint test in every room or acknowledge alerts in someone's name."""
        origin = self.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc != self.headers.get("Host"):
            raise HttpError(403, "a request from another site's page is refused")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise HttpError(400, "Content-Length is not a number") from None
        if length < 0 or length > MAX_BODY:
            raise HttpError(400, f"body of {length} bytes (at most {MAX_BODY})")
        raw = self.rfile.read(length) if length else b""
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except (ValueError, UnicodeDecodeError) as e:
            raise HttpError(400, f"body is not JSON: {e}") from None

    def send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def json(self, status: int, data: Any) -> None:
        self.send(status, json.dumps(data, ensure_ascii=False).encode(), CONTENT_TYPES["json"])

    def page(self, name: str, boot: dict[str, Any]) -> None:
        text = (STATIC / name).read_text(encoding="utf-8")
        text = text.replace("__BOOT__", html.escape(json.dumps(boot, ensure_ascii=False), quote=True))
        self.send(200, text.encode(), CONTENT_TYPES["html"])

    def error(self, status: int, message: str, path: str) -> None:
        """JSON for the API, a short page for a person."""
        if path.startswith("/api/"):
            self.json(status, {"error": message, "status": status})
            return
        title = f"{status} {HTTPStatus(status).phrase}"
        body = (f'<!doctype html><meta charset="utf-8"><title>{title}</title><h1>{title}</h1>'
                f'<p>{html.escape(message)}</p><p><a href="/">返回考点总览</a></p>')
        self.send(status, body.encode(), CONTENT_TYPES["html"])

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("board %s: " + format, self.address_string(), *args)
