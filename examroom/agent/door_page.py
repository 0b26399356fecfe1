"""The proctor's page at the door: the last verdicts, the pending sweeps, what to type when a card fails.

A proctor at the door has no shell open and no time to read JSON: this page (a
browser on the box, or a tablet on a short cable) shows each verdict in Chinese
and English as it is published, with its time in the exam's zone
(``[procedure] timezone``, formatted here, never by the browser, whose zone is
whatever the tablet says), the candidates admitted but not yet swept, and the
CLI commands of the fallbacks (manual admission by the last 6 ID characters,
suspect, confirm).

Privacy: the page is built from the published ``checkin`` data, which never
holds a name or a full ID number (``id_masked`` at most), and it binds to
loopback by default. The ``Host`` header must be an IP address, ``localhost`` or
the box's own name, so a web page elsewhere cannot read it through DNS
rebinding. stdlib only, no CDN: the room may have no internet at all.
"""
from __future__ import annotations

import collections
import ipaddress
import json
import logging
import socket
import threading
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable
from zoneinfo import ZoneInfo

from examroom.agent.config import DEFAULT_CONFIG
from examroom.contract.times import epoch
from examroom.contract.vocabulary import EventKind, Verdict

log = logging.getLogger(__name__)

# verdict -> (中文, English, colour of the door light): one table for the page and the lights
LABELS: dict[str, tuple[str, str, str]] = {
    Verdict.ADMITTED: ("准许入场", "admitted", "green"),
    Verdict.DUPLICATE: ("重复验证（已在场）", "already checked in", "amber"),
    Verdict.NOT_IN_ROOM: ("非本考场考生", "not in this room", "red"),
    Verdict.UNKNOWN_CARD: ("无法识别的卡", "unknown card", "red"),
    Verdict.LATE_REFUSED: ("迟到，禁止入场", "late: entry refused", "red"),
    Verdict.OUTSIDE_WINDOW: ("不在入场时间", "outside the entry window", "red"),
    Verdict.INVALID_ID: ("身份证号无效", "invalid ID number", "red"),
    Verdict.EXPIRED_CARD: ("身份证已过期", "ID card expired", "red"),
    Verdict.SUSPECT: ("存疑，待两位监考员确认", "suspect: two proctors confirm", "amber"),
    Verdict.LEFT: ("暂时离场", "left the room", "grey"),
    Verdict.HANDED_IN: ("交卷离场", "handed in", "grey"),
    Verdict.REENTRY_REFUSED: ("禁止再次入场", "re-entry refused", "red"),
    Verdict.SENT_TO_VERIFICATION: ("送身份核验点", "sent to identity verification", "amber"),
    Verdict.IDENTITY_REFUSED: ("身份核验未通过", "identity refused", "red"),
    Verdict.PLAN_UNVERIFIED: ("座次表未核验，禁止入场", "seat plan not verified: entry shut", "red"),
}
KEEP = 12  # rows on the page: a door's last few minutes
# inline script and style only (no CDN, nothing fetched but the box's own /state)
CSP = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; "
       "frame-ancestors 'none'")


def label(verdict: str) -> tuple[str, str, str]:
    """A verdict this table does not know yet is shown as its word, in red: stop is the safe signal."""
    return LABELS.get(verdict, (verdict, verdict, "red"))


def fallback_commands(config_file: str) -> list[dict[str, str]]:
    """What a proctor types on the box when the reader cannot help (examroom-agent checkin ...)."""
    c = "" if config_file in ("", DEFAULT_CONFIG) else f" -c {config_file}"
    cmd = "examroom-agent checkin "
    return [
        {"zh": "读不出卡：按身份证号后6位入场", "en": "card unreadable: admit by the last 6 ID characters",
         "cmd": f"{cmd}admit{c} --id-last6 <后6位> --proctor <监考员编号>"},
        {"zh": "按座位号入场", "en": "admit by seat",
         "cmd": f"{cmd}admit{c} --seat <座位号> --proctor <监考员编号>"},
        {"zh": "存疑（拍照留存）", "en": "mark suspect (photographed)",
         "cmd": f"{cmd}suspect <座位号>{c} --proctor <监考员编号> --reason <原因>"},
        {"zh": "两位监考员分别确认", "en": "confirm: two different proctors, one each",
         "cmd": f"{cmd}confirm <座位号>{c} --proctor <监考员编号>"},
        {"zh": "临时离场", "en": "leaves the room (re-entry needs a new sweep)", "cmd": f"{cmd}leave <座位号>{c}"},
    ]


class DoorPage:
    def __init__(self, listen: str, zone: str, room: str, room_label: str,
                 exam_state: Callable[[], dict[str, Any]], banners: Callable[[], list[str]],
                 clock: Callable[[], float], config_file: str = "") -> None:
        """``exam_state``: the station's state (phase, counts, pending sweeps); ``banners``:
        what keeps the door from working as usual (entry shut, a light that failed)."""
        host, _, port = listen.rpartition(":")
        self._address = (host or "127.0.0.1", int(port))
        self._zone_name = zone
        self._zone = ZoneInfo(zone)
        self._room, self._label = room, room_label
        self._exam_state = exam_state
        self._banners = banners
        self._clock = clock
        self._fallback = fallback_commands(config_file)
        self._rows: collections.deque[dict[str, Any]] = collections.deque(maxlen=KEEP)
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._problem = ""
        self._hosts = {"localhost", socket.gethostname().lower()}

    # -- what the page shows ---------------------------------------------------------------------

    def on_event(self, kind: str, data: dict[str, Any]) -> None:
        """An emitted event (called inside ``emit``: only a few dict operations, no I/O)."""
        if kind != EventKind.CHECKIN:
            return
        verdict = str(data.get("verdict"))
        zh, en, colour = label(verdict)
        seat = data.get("seat")
        row = {"seat": seat, "verdict": verdict, "zh": zh, "en": en, "colour": colour,
               "time": self._hhmmss(data.get("time")), "method": data.get("method"),
               "id_masked": data.get("id_masked"), "reentry": bool(data.get("reentry")),
               "next": (f"examroom-agent checkin confirm {seat} --proctor <监考员编号>"
                        if verdict == Verdict.SUSPECT and seat else "")}
        with self._lock:
            self._rows.appendleft(row)

    def _hhmmss(self, t: Any) -> str:
        """The check-in's time as the door reads it; the event's data is the published copy
        (ISO 8601, ``contract/times.py``)."""
        at = epoch(t)
        if at is None:
            return ""
        return datetime.fromtimestamp(at, self._zone).strftime("%H:%M:%S")

    def snapshot(self) -> dict[str, Any]:
        """The page's data (``GET /state``)."""
        try:
            exam = self._exam_state() or {}
            banners = list(self._banners())
        except Exception as e:  # a status bug must not blank the door's page
            log.exception("door page: state failed")
            exam, banners = {}, [f"state unavailable: {type(e).__name__}"]
        with self._lock:
            rows = list(self._rows)
        offset = datetime.fromtimestamp(self._clock(), self._zone).strftime("%z")
        return {"room": self._room, "label": self._label, "zone": f"{self._zone_name} (UTC{offset[:3]}:{offset[3:]})",
                "now": self._hhmmss(self._clock()), "session": exam.get("session"), "phase": exam.get("phase"),
                "present": exam.get("present"), "total": exam.get("total"),
                "pending_sweep": list(exam.get("pending_sweep") or []), "banners": banners,
                "verdicts": rows, "fallback": self._fallback}

    # -- serving ---------------------------------------------------------------------------------

    def host_allowed(self, host_header: str) -> bool:
        """An IP address, localhost or this box's name: a rebinding domain name is refused."""
        host = host_header.strip().lower()
        if host.startswith("["):
            host = host[1:host.find("]")] if "]" in host else host
        elif host.count(":") == 1:
            host = host.split(":", 1)[0]
        if host in self._hosts:
            return True
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            return False

    def start(self) -> None:
        """A port in use costs the page, never the agent: said in the alerts."""
        try:
            self._server = ThreadingHTTPServer(self._address, _handler(self))
        except OSError as e:
            self._problem = f"door page: cannot listen on {self._address[0]}:{self._address[1]}: {e.strerror or e}"
            log.error("%s", self._problem)
            return
        self._server.daemon_threads = True
        host = self._address[0]
        if not host.startswith("127.") and host not in ("localhost", "::1"):
            log.warning("door page listens on %s: anyone who reaches this address sees the verdicts and "
                        "masked ID numbers; keep it on 127.0.0.1 unless the door's screen needs otherwise", host)
        threading.Thread(target=self._server.serve_forever, name="door-page", daemon=True).start()
        log.info("door page on http://%s:%d/", *self.address)

    @property
    def address(self) -> tuple[str, int]:
        """Where it listens (the real port when configured as 0)."""
        return self._server.server_address[:2] if self._server is not None else self._address  # type: ignore[return-value]

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def alerts(self) -> list[str]:
        return [self._problem] if self._problem else []


def _handler(page: DoorPage) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "examroom-door"

        def do_GET(self) -> None:
            if not page.host_allowed(self.headers.get("Host", "")):
                self._send(403, b"host not allowed", "text/plain; charset=utf-8")
            elif self.path.split("?", 1)[0] == "/":
                self._send(200, PAGE, "text/html; charset=utf-8")
            elif self.path.split("?", 1)[0] == "/state":
                body = json.dumps(page.snapshot(), ensure_ascii=False).encode()
                self._send(200, body, "application/json; charset=utf-8")
            else:
                self._send(404, b"not found", "text/plain; charset=utf-8")

        def _send(self, code: int, body: bytes, kind: str) -> None:
            self.send_response(code)
            for k, v in (("Content-Type", kind), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"),
                         ("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
                         ("X-Frame-Options", "DENY"), ("Content-Security-Policy", CSP)):
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("door page: " + format, *args)

    return Handler


PAGE = """<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>考场入口 · Door</title>
<style>
body{font-family:"Noto Sans CJK SC","Microsoft YaHei",sans-serif;margin:0;background:#111;color:#eee}
header{display:flex;gap:1.5em;align-items:baseline;padding:.6em 1em;background:#222;flex-wrap:wrap}
h1{font-size:1.3em;margin:0}h2{font-size:1em;margin:.8em 0 .3em;color:#aaa}
main{padding:0 1em 1em}
.banner{background:#b00;color:#fff;font-weight:bold;padding:.6em 1em;margin:.4em 0}
#stale{background:#a60;color:#fff;padding:.4em 1em}
#latest{font-size:2.2em;font-weight:bold;padding:.5em;margin:.5em 0;border-radius:.3em;text-align:center}
.green{background:#176b2c}.red{background:#a11}.amber{background:#b07800}.grey{background:#444}
table{border-collapse:collapse;width:100%}td,th{padding:.3em .5em;border-bottom:1px solid #333;text-align:left}
td.v{border-left:.5em solid transparent}tr.green td.v{border-color:#2c3}tr.red td.v{border-color:#e33}
tr.amber td.v{border-color:#fb0}tr.grey td.v{border-color:#777}
code{background:#222;padding:.1em .3em;user-select:all}.pending span{display:inline-block;background:#b07800;
margin:.1em;padding:.2em .6em;border-radius:.2em;font-weight:bold}small{color:#999}
</style></head>
<body>
<header><h1 id="room"></h1><span id="exam"></span><span id="zone"></span><span id="now"></span></header>
<div id="stale" hidden>与本机代理失去联系，显示的可能不是最新结果 / lost contact with the agent: this may be stale</div>
<main>
<div id="banners"></div>
<div id="latest" class="grey">等待验证 / waiting for the first check</div>
<h2>最近验证结果 / Last verdicts</h2>
<table><thead><tr><th>时间 time</th><th>座位 seat</th><th>结果 verdict</th><th>证件 ID</th>
<th>下一步 next</th></tr></thead>
<tbody id="rows"></tbody></table>
<h2>待金属探测（已入场未清扫）/ Pending sweeps</h2><div id="pending" class="pending"></div>
<h2>备用操作（在本机终端输入）/ Fallbacks: type on the box</h2><div id="fallback"></div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}
function render(s) {
  $("room").textContent = s.label || s.room;
  $("exam").textContent = s.session ? `${s.session} · ${s.phase} · ${s.present ?? "?"}/${s.total ?? "?"}`
                                    : "无考试场次 / no session";
  $("zone").textContent = s.zone; $("now").textContent = s.now;
  $("banners").replaceChildren(...s.banners.map((b) => el("div", b, "banner")));
  const last = s.verdicts[0];
  if (last) {
    $("latest").className = last.colour;
    $("latest").textContent = `${last.seat ? last.seat + "号 " : ""}${last.zh} / ${last.en} · ${last.time}`;
  }
  $("rows").replaceChildren(...s.verdicts.map((v) => {
    const tr = el("tr", "", v.colour);
    tr.dataset.seat = v.seat || "";
    tr.dataset.verdict = v.verdict;
    const what = `${v.zh} / ${v.en}${v.reentry ? " (再次入场 re-entry)" : ""}`;
    tr.append(el("td", v.time), el("td", v.seat || "—"), el("td", what, "v"), el("td", v.id_masked || ""),
              el("td", ""));
    if (v.next) tr.lastChild.append(el("code", v.next));
    return tr;
  }));
  const pending = s.pending_sweep.map((p) => el("span", p));
  $("pending").replaceChildren(...(pending.length ? pending : [el("small", "无 / none")]));
  if (!$("fallback").childElementCount)  // once: a proctor may be selecting a command to copy
    $("fallback").append(...s.fallback.map((f) => {
      const d = el("div");
      d.append(el("div", `${f.zh} / ${f.en}`), el("code", f.cmd));
      return d;
    }));
}
async function tick() {
  try {
    const r = await fetch("state", {cache: "no-store"});
    if (!r.ok) throw new Error(String(r.status));
    render(await r.json()); $("stale").hidden = true;
  } catch (e) { $("stale").hidden = false; }
  finally { setTimeout(tick, 500); }
}
tick();
</script>
</body></html>
""".encode()
