"""Commands from the site over MQTT: run off paho's thread, answered once, and recorded.

Every request is answered exactly once, on its MQTT v5 response topic (or
``reply/{name}``), with the request's ``id``, and recorded as a ``command``
event, refused ones included (busy, malformed, retained, not accepted over
MQTT), since the site must show it received and answered instructions pushed
from above (指令推送). A retained command never runs: it would run again at
every reconnect, inside a listening window as likely as not.
"""
from __future__ import annotations

import json
import logging
import re
import threading
from typing import Any, Callable

from examroom.agent.commands import REMOTE
from examroom.agent.control import Handler, dispatch
from examroom.contract.topics import Topics
from examroom.contract.vocabulary import EventKind

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], Any]
Reply = Callable[[str, dict[str, Any], Any], Any]  # (topic, payload, correlation data)
MAX_REMOTE_RUNNING = 4
MAX_DEPTH = 32  # nesting of a request; a command's args are a flat table or a list of names
MAX_ID = 200  # characters of a request id


class Refused(ValueError):
    """A request that is answered with an error without running."""


_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]')
_COLON = re.compile(r"\s*:\s*")


def _scan(text: str) -> tuple[int, Any]:
    """The nesting depth of a JSON text and the raw value of its top-level ``"id"``, found
    without recursion: ``json.loads`` of a payload nested thousands deep raises
    RecursionError before it can say which request it was, and that request is still owed
    a reply carrying its id."""
    depth = deepest = 0
    rid: Any = None
    for m in _TOKEN.finditer(text):
        tok = m.group()
        if tok in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif tok in "]}":
            depth -= 1
        elif depth == 1 and tok == '"id"' and (colon := _COLON.match(text, m.end())):
            try:
                rid, _ = json.JSONDecoder().raw_decode(text, colon.end())
            except (ValueError, RecursionError):
                rid = None
    return deepest, rid


def _valid_id(rid: Any) -> bool:
    """An id the reply and the record can carry: a short printable string or a number."""
    if rid is None or isinstance(rid, bool) or not isinstance(rid, (str, int, float)):
        return rid is None
    text = str(rid)
    try:
        text.encode()  # a lone surrogate could be neither stored nor sent back
    except UnicodeEncodeError:
        return False
    return len(text) <= MAX_ID and text.isprintable()


class Request:
    """One MQTT request, parsed on paho's thread before anything else, so even a refusal
    can name the request it refuses."""

    def __init__(self, topic: str, payload: bytes, props: Any) -> None:
        self.topic = topic
        self.name = topic.rsplit("/", 1)[-1]
        self.correlation = getattr(props, "CorrelationData", None)
        self.response_topic: str | None = getattr(props, "ResponseTopic", None)
        self.id: Any = None
        self.args: dict[str, Any] = {}
        self.error: str | None = None
        try:
            self._parse(payload)
        except Refused as e:
            self.error = str(e)

    def _parse(self, payload: bytes) -> None:
        try:
            text = (payload or b"{}").decode()
        except UnicodeDecodeError:
            raise Refused("payload is not UTF-8 JSON") from None
        depth, rid = _scan(text)
        if _valid_id(rid):
            self.id = rid  # known even when the rest is refused
        if depth > MAX_DEPTH:
            raise Refused(f"payload nested deeper than {MAX_DEPTH} levels")
        try:
            req = json.loads(text)
        except ValueError:  # JSONDecodeError, or an integer of 5,000 digits
            raise Refused("payload is not JSON (or a number in it is too long)") from None
        if not isinstance(req, dict):
            raise Refused("payload must be a JSON object")
        if not _valid_id(req.get("id")):
            raise Refused(f"'id' must be a string or a number of at most {MAX_ID} printable characters")
        self.id = req.get("id")
        args = req.get("args") or {}
        if not isinstance(args, dict):
            raise Refused("'args' must be an object")
        self.args = args


class RemoteCommands:
    def __init__(self, table: dict[str, Handler], emit: Emit, reply: Reply, topics: Topics) -> None:
        self._table = table
        self._emit = emit
        self._reply = reply
        self._topics = topics
        self._slots = threading.BoundedSemaphore(MAX_REMOTE_RUNNING)

    def on_mqtt(self, topic: str, payload: bytes, props: Any, retained: bool = False) -> None:
        """Called on paho's network thread: a trial listening or a self-test takes seconds, which
        would stall the MQTT loop past the keep-alive, so each command runs on its own thread
        (as control-socket commands do). Refusals are answered here, at once."""
        req = Request(topic, payload, props)
        if retained:
            log.warning("retained MQTT command %s refused: a command runs once, when it is sent", req.name)
            self._answer(req, {"ok": False, "error": "retained command refused: clear the retained message; "
                                                     "a command runs once, when it is sent"})
            return
        if req.response_topic is not None and not req.response_topic.startswith(self._topics.reply_tree):
            # the broker's ACL refuses it too; the room says so itself and answers where it may
            log.warning("MQTT command %s: response topic %r is outside %s; replying on %s", req.name,
                        req.response_topic, self._topics.reply_tree, self._topics.reply(req.name))
            req.response_topic = None
            req.error = req.error or f"response topic outside this room's {self._topics.reply_tree} tree"
        if req.error is None and req.name not in REMOTE:
            req.error = f"command {req.name!r} is not accepted over MQTT; accepted: {', '.join(sorted(REMOTE))}"
        if req.error is not None:
            self._answer(req, {"ok": False, "error": req.error})
            return
        if not self._slots.acquire(blocking=False):  # a burst of commands must not pile up threads
            log.warning("MQTT command %s refused: %d already running", req.name, MAX_REMOTE_RUNNING)
            self._answer(req, {"ok": False, "error": f"busy: {MAX_REMOTE_RUNNING} commands are running; try again"})
            return

        def run() -> None:
            try:
                self._answer(req, self._run(req))
            except Exception as e:  # the reply is owed whatever happened
                log.exception("MQTT command on %s failed", topic)
                self._answer(req, {"ok": False, "error": f"internal error: {type(e).__name__}"})
            finally:
                self._slots.release()

        threading.Thread(target=run, name="mqtt-command", daemon=True).start()

    def _run(self, req: Request) -> dict[str, Any]:
        args = req.args
        if req.name == "selftest":
            # from afar, a self-test only reads: a tone or a relay click in a room full
            # of candidates needs the person in that room to say yes
            args = {**args, "act": False}
        return dispatch(self._table, json.dumps({"cmd": req.name, "args": args}).encode(), f"site ({req.topic})")

    def _answer(self, req: Request, reply: dict[str, Any]) -> None:
        """Record, then reply: the record is evidence the site's instruction arrived."""
        reply = {**reply, "request_id": req.id, "command": req.name}
        try:
            self._emit(EventKind.COMMAND, {"command": req.name, "topic": req.topic, "request_id": req.id,
                                           "ok": reply["ok"], "error": reply.get("error")})
        finally:
            self._reply(req.response_topic or self._topics.reply(req.name), reply, req.correlation)
