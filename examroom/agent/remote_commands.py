"""Commands from the site over MQTT: run off paho's thread, answered, and recorded.

Each request is answered on its MQTT v5 response topic (or ``reply/{name}``)
and recorded as a ``command`` event, since the site must show it received and
answered instructions pushed from above (指令推送).
"""
from __future__ import annotations

import json
import logging
import threading
from typing import Any, Callable

from examroom.agent.commands import REMOTE
from examroom.agent.control import Handler, RequestError, dispatch
from examroom.contract.topics import Topics
from examroom.contract.vocabulary import EventKind

log = logging.getLogger(__name__)

Emit = Callable[[str, dict[str, Any]], Any]
Reply = Callable[[str, dict[str, Any], Any], Any]  # (topic, payload, correlation data)
MAX_REMOTE_RUNNING = 4


class RemoteCommands:
    def __init__(self, table: dict[str, Handler], emit: Emit, reply: Reply, topics: Topics) -> None:
        self._table = table
        self._emit = emit
        self._reply = reply
        self._topics = topics
        self._slots = threading.BoundedSemaphore(MAX_REMOTE_RUNNING)

    def on_mqtt(self, topic: str, payload: bytes, props: Any) -> None:
        """Called on paho's network thread: a trial listening or a self-test takes seconds, which
        would stall the MQTT loop past the keep-alive, so each command runs on its own thread
        (as control-socket commands do)."""
        if not self._slots.acquire(blocking=False):  # a burst of commands must not pile up threads
            name = topic.rsplit("/", 1)[-1]
            log.warning("MQTT command %s refused: %d already running", name, MAX_REMOTE_RUNNING)
            self._reply(getattr(props, "ResponseTopic", None) or self._topics.reply(name),
                        {"request_id": None, "command": name, "ok": False,
                         "error": f"busy: {MAX_REMOTE_RUNNING} commands are running; try again"},
                        getattr(props, "CorrelationData", None))
            return

        def run() -> None:
            try:
                self._run(topic, payload, props)
            except Exception:
                log.exception("MQTT command on %s failed", topic)
            finally:
                self._slots.release()

        threading.Thread(target=run, name="mqtt-command", daemon=True).start()

    def _run(self, topic: str, payload: bytes, props: Any) -> None:
        name = topic.rsplit("/", 1)[-1]
        response_topic = getattr(props, "ResponseTopic", None) or self._topics.reply(name)
        correlation = getattr(props, "CorrelationData", None)
        request_id = None
        try:
            req = json.loads(payload or b"{}")
            if not isinstance(req, dict):
                raise RequestError("payload must be a JSON object")
            request_id = req.get("id")
            if name not in REMOTE:
                raise RequestError(f"command {name!r} is not accepted over MQTT; "
                                   f"accepted: {', '.join(sorted(REMOTE))}")
            args = req.get("args") or {}
            if name == "selftest" and isinstance(args, dict):
                # from afar, a self-test only reads: a tone or a relay click in a room full
                # of candidates needs the person in that room to say yes
                args = {**args, "act": False}
            line = json.dumps({"cmd": name, "args": args}).encode()
            reply = dispatch(self._table, line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            reply = {"ok": False, "error": "payload is not JSON"}
        except RequestError as e:
            reply = {"ok": False, "error": str(e)}
        reply = {**reply, "request_id": request_id, "command": name}
        self._emit(EventKind.COMMAND, {"command": name, "topic": topic, "request_id": request_id,
                                       "ok": reply["ok"], "error": reply.get("error")})
        self._reply(response_topic, reply, correlation)
