"""Commands, from the local control socket and from MQTT ``cmd/{name}`` topics.

One table serves both, so a technician at the box and the aggregator get the
same behaviour. Over MQTT only the commands in ``REMOTE`` are accepted (no
simulation, no check-in decisions: those belong to proctors in the room); each
is answered on the request's MQTT v5 response topic (or ``reply/{name}``) and
recorded as a ``command`` event, since the site must show it received and
answered instructions pushed from above (指令推送).
"""
from __future__ import annotations

import json
import logging
import threading
from typing import TYPE_CHECKING, Any, Callable

from examroom.agent.control import RequestError, dispatch
from examroom.agent.devices import selftest_verdict
from examroom.drivers.gb11643 import has_id_shape

if TYPE_CHECKING:
    from examroom.agent.daemon import Agent

log = logging.getLogger(__name__)

REMOTE = frozenset({"ping", "status", "note", "selftest", "snapshot", "audio_switch", "trial_listening"})
MAX_NOTE = 2000
MAX_REMOTE_RUNNING = 4


def _text(args: dict[str, Any], key: str, limit: int = 200, required: bool = True) -> str:
    v = args.get(key, "")
    if not isinstance(v, str) or (required and not v.strip()):
        raise RequestError(f"{key!r} must be a non-empty string")
    if len(v) > limit:
        raise RequestError(f"{key!r} is longer than {limit} characters")
    return v.strip()


class Commands:
    def __init__(self, agent: "Agent") -> None:
        self.agent = agent
        self._slots = threading.BoundedSemaphore(MAX_REMOTE_RUNNING)
        # One live table: the control server holds this very dict, so commands
        # registered later (by the room's exam components) are served too.
        self.table: dict[str, Callable[[dict[str, Any]], dict[str, Any]]] = {
            "ping": self.ping, "status": self.status, "note": self.note,
            "selftest": self.selftest, "sim": self.sim}

    def register(self, name: str, fn: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
        self.table[name] = fn

    # -- commands -----------------------------------------------------------
    def ping(self, _args: dict[str, Any]) -> dict[str, Any]:
        return {"pong": True}

    def status(self, _args: dict[str, Any]) -> dict[str, Any]:
        return self.agent.status()

    def note(self, args: dict[str, Any]) -> dict[str, Any]:
        text = self.agent.room.scrub(_text(args, "text", MAX_NOTE))
        data = {"text": text}
        if args.get("author"):
            data["author"] = self.agent.room.scrub(_text(args, "author", 100))
        ev = self.agent.emit("note", data)
        return {"id": ev.id, "seq": ev.seq}

    def selftest(self, args: dict[str, Any]) -> dict[str, Any]:
        names = args.get("devices") or None
        if names is not None and (not isinstance(names, list) or not all(isinstance(n, str) for n in names)):
            raise RequestError("'devices' must be a list of device names")
        for n in names or []:
            self.agent.devices.get(n)
        act, allow_absent = args.get("act"), args.get("allow_absent", False)
        if act is not None and not isinstance(act, bool):
            raise RequestError("'act' must be true, false or absent")
        if not isinstance(allow_absent, bool):
            raise RequestError("'allow_absent' must be true or false")
        schedule = self.agent.config.schedule
        if act and schedule is not None and schedule.listening_at(self.agent.clock()) is not None:
            raise RequestError("a listening window is on: the self-test will not switch the relay "
                               "or play a tone now; run it without acting on outputs")
        results = [r.as_dict() for r in self.agent.devices.selftest(names, act)]
        verdict = selftest_verdict(results, allow_absent)
        self.agent.emit("selftest", {"ok": verdict["passed"], "results": results, "act": act,
                                     "absent": verdict["absent"], "allow_absent": allow_absent})
        return {**verdict, "results": results, "act": act}

    def sim(self, args: dict[str, Any]) -> dict[str, Any]:
        """``sim <device|kind|card|alarm|button|armed> words...``: act out hardware on a sim backend."""
        words = args.get("words")
        if not isinstance(words, list) or not words or not all(isinstance(w, str) for w in words):
            raise RequestError("'words' must be a non-empty list of strings, e.g. [\"alarm\", \"on\"]")
        target, rest = words[0], words[1:]
        drivers = self.agent.devices.drivers
        sims = [d for d in drivers.values() if d.backend == "sim"]
        if target in drivers:
            drv, action, params = drivers[target], (rest or [""])[0], rest[1:]
        elif target == "card":
            # An ID number (17 digits, then a digit or X) goes to the ID reader, a hex UID to PC/SC:
            # length alone would send a 9-byte UID (18 hex digits) to the ID reader. A UID of only
            # decimal digits that looks like an ID number reaches PC/SC by naming the device.
            kind = "idcard" if rest and has_id_shape(rest[0]) else "pcsc"
            drv, action, params = _first(sims, kind, target), "card", rest
        elif target in ("alarm", "button", "armed"):
            drv, action, params = _first(sims, "metal_detector", target), target, rest
        else:
            drv, action, params = _first(sims, target, target), (rest or [""])[0], rest[1:]
        if drv.backend != "sim":
            raise RequestError(f"device {drv.name!r} is real hardware ({drv.backend}), not simulated")
        return {"device": drv.name, "result": drv.simulate(action, params)}

    # -- MQTT ---------------------------------------------------------------
    def on_mqtt(self, topic: str, payload: bytes, props: Any) -> None:
        """Called on paho's network thread: a trial listening or a self-test takes seconds, which
        would stall the MQTT loop past the keep-alive, so each command runs on its own thread
        (as control-socket commands do)."""
        if not self._slots.acquire(blocking=False):  # a burst of commands must not pile up threads
            name = topic.rsplit("/", 1)[-1]
            log.warning("MQTT command %s refused: %d already running", name, MAX_REMOTE_RUNNING)
            self.agent.uplink.publish_reply(
                getattr(props, "ResponseTopic", None) or f"{self.agent.config.base_topic}/reply/{name}",
                {"request_id": None, "command": name, "ok": False,
                 "error": f"busy: {MAX_REMOTE_RUNNING} commands are running; try again"},
                getattr(props, "CorrelationData", None))
            return

        def run() -> None:
            try:
                self._run_mqtt(topic, payload, props)
            except Exception:
                log.exception("MQTT command on %s failed", topic)
            finally:
                self._slots.release()

        threading.Thread(target=run, name="mqtt-command", daemon=True).start()

    def _run_mqtt(self, topic: str, payload: bytes, props: Any) -> None:
        name = topic.rsplit("/", 1)[-1]
        response_topic = getattr(props, "ResponseTopic", None) or f"{self.agent.config.base_topic}/reply/{name}"
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
            reply = dispatch(self.table, line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            reply = {"ok": False, "error": "payload is not JSON"}
        except RequestError as e:
            reply = {"ok": False, "error": str(e)}
        reply = {**reply, "request_id": request_id, "command": name}
        self.agent.emit("command", {"command": name, "topic": topic, "request_id": request_id,
                                    "ok": reply["ok"], "error": reply.get("error")})
        self.agent.uplink.publish_reply(response_topic, reply, correlation)


def _first(sims: list, kind: str, target: str):
    for d in sims:
        if d.kind == kind:
            return d
    known = ", ".join(sorted({d.kind for d in sims} | {d.name for d in sims})) or "none"
    raise RequestError(f"no simulated device for {target!r} (simulated: {known})")
