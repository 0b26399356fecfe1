"""The site's live board, end to end: a real Mosquitto, the real aggregator with its board,
real room agents as processes, and headless Chromium reading the pages.

Each browser check of a live change waits at most 2 s measured from the moment after its
cause (a killed agent, a covered camera, a click, a committed row), on the page's own state
(WebDriverWait); waits for setup are longer. Pushes and joint tests are seeded into the store
the way their producers write them, then announced to the board as the aggregator's writer does.
"""
from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator
from zoneinfo import ZoneInfo

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from devkit.localbroker import Broker
from examroom.site import web_stream
from examroom.site.app import SiteApp
from examroom.site.config import parse
from examroom.site.store import Store
from examroom.site.web import Board
from tests.agentproc import AgentProcess, write_config

SITE_ZONE = ZoneInfo("Asia/Shanghai")
EXPECTED = [f"exp{i:02d}" for i in range(1, 11)]
SITE_TOML = """
[site]
id = "site01"
name = "郑州一中考点 (test)"
[mqtt]
port = {port}
[store]
path = "{tmp}/site.db"
[liveness]
heartbeat_s = 0.5
[board]
listen = "127.0.0.1:0"
[rooms]
expected = {expected}
"""
CAMERA = """
[[device]]
kind = "camera"
name = "camera"
backend = "sim"
interval_s = 0.2
"""
LIVE = 2.0  # seconds a change may take from its cause to every open board
SETUP = 15.0
RED = "rgba(183, 28, 28, 1)"  # board.css --offline: what stands out


@dataclass
class Site:
    app: SiteApp
    broker: Broker
    tmp: Path
    agents: list[AgentProcess] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.app.board.url

    @property
    def store(self) -> Store:
        return self.app.store

    def agent(self, room: str, extra: str = "") -> AgentProcess:
        a = AgentProcess(write_config(self.tmp, self.broker.port, room=room, extra=extra), self.tmp / f"{room}.sock")
        self.agents.append(a)
        return a.start()

    def seed_event(self, room: str, kind: str, data: dict[str, Any], seq: int, ts: str,
                   problems: tuple[str, ...] = ()) -> None:
        """Store an event and count it as the ingest does, then tell the board as the writer does."""
        ev = {"id": str(uuid.uuid4()), "seq": seq, "kind": kind, "ts": ts, "session": 1, "replayed": False,
              "data": data}
        with self.store.batch():
            row = self.store.room(room)
            self.store.add_event(room, ev, json.dumps(ev, ensure_ascii=False), list(problems), time.time())
            self.store.update_room(room, events=row["events"] + 1, last_seq=max(seq, row["last_seq"]))
        self.app.board.rooms_changed({room})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    tmp = tmp_path_factory.mktemp("board")
    broker = Broker(tmp / "b", persistence=True).start()
    cfg = parse(SITE_TOML.format(port=broker.port, tmp=tmp, expected=json.dumps(EXPECTED)), str(tmp / "site.toml"))
    s = Site(SiteApp(cfg), broker, tmp)
    try:
        s.app.start()
        assert s.app.subscriber.wait_connected(10), "the aggregator did not connect to the broker"
        yield s
    finally:
        s.app.stop()
        broker.kill()


@pytest.fixture
def rooms(site: Site) -> Iterator[Callable[..., AgentProcess]]:
    """Start room agents for one test; they are killed after it, so the next test's page is quiet."""
    mine: list[AgentProcess] = []

    def start(room: str, extra: str = "") -> AgentProcess:
        mine.append(site.agent(room, extra))
        return mine[-1]

    yield start
    for a in mine:
        a.kill()


# -- reading the pages ---------------------------------------------------------------
def wait(driver: Any, cond: Callable[[Any], Any], timeout: float = LIVE, what: str = "") -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.05,
                         ignored_exceptions=(StaleElementReferenceException,)).until(cond, message=what)


def read(driver: Any, fn: Callable[[Any], Any]) -> Any:
    """What ``fn`` reads from the page, read again if the page redrew it meanwhile (a tile is
    redrawn at every heartbeat, the room page's tables at every change of the room)."""
    return wait(driver, lambda d: (fn(d),), SETUP)[0]


def click(driver: Any, css: str) -> None:
    wait(driver, lambda d: d.find_element(By.CSS_SELECTOR, css).click() or True, SETUP)


def open_page(driver: Any, url: str) -> None:
    """Load a page and wait until its live stream delivered the first snapshot."""
    driver.get(url)
    wait(driver, lambda d: d.find_element(By.TAG_NAME, "body").get_attribute("data-live") == "1", SETUP,
         f"{url}: no snapshot from /api/stream")


def tile(driver: Any, room: str) -> WebElement | None:
    found = driver.find_elements(By.CSS_SELECTOR, f'.tile[data-room="{room}"]')
    return found[0] if found else None


def tile_state(driver: Any, room: str) -> str | None:
    t = tile(driver, room)
    return t.get_attribute("data-state") if t is not None else None


def tile_text(driver: Any, room: str, css: str | None = None) -> str:
    t = tile(driver, room)
    return "" if t is None else (t.find_element(By.CSS_SELECTOR, css) if css else t).text


def tile_ids(driver: Any) -> list[str]:
    return [t.get_attribute("data-room") for t in driver.find_elements(By.CSS_SELECTOR, ".tile")]


def alert_item(driver: Any, room: str, text: str) -> WebElement | None:
    for li in driver.find_elements(By.CSS_SELECTOR, f'#alerts li.alert[data-room="{room}"]'):
        if text in li.text:
            return li
    return None


def in_zone(ts: str | float) -> str:
    """A time as the board must show it: in the site's zone."""
    d = datetime.fromisoformat(ts) if isinstance(ts, str) else datetime.fromtimestamp(ts, timezone.utc)
    return d.astimezone(SITE_ZONE).strftime("%Y-%m-%d %H:%M:%S")


def http(url: str, method: str = "GET", body: bytes | None = None, origin: str | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json", **({"Origin": origin} if origin else {})}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            status, raw, ctype = r.status, r.read(), r.headers.get("Content-Type", "")
    except urllib.error.HTTPError as e:
        status, raw, ctype = e.code, e.read(), e.headers.get("Content-Type", "")
    return status, json.loads(raw) if ctype.startswith("application/json") else raw.decode()


def raw_request(url: str, data: bytes) -> bytes:
    """Bytes as they are (no client would send these) and the whole answer, until the server closes."""
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    with socket.create_connection((host, port), timeout=5) as s:
        s.sendall(data)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    return answer


# -- live changes: offline, alert, acknowledgement --------------------------------------
def test_a_killed_room_shows_offline_within_2s(site: Site, chromium: Any, rooms: Callable) -> None:
    agent = rooms("off101")
    open_page(chromium, site.url)
    wait(chromium, lambda d: tile_state(d, "off101") == "online" and tile_text(d, "off101", ".age").endswith("秒前"),
         SETUP)
    agent.kill()
    wait(chromium, lambda d: tile_state(d, "off101") == "offline", LIVE, "tile not offline 2 s after the kill")
    text = read(chromium, lambda d: tile_text(d, "off101"))
    assert "离线" in text and "Last Will" in text
    age = read(chromium, lambda d: tile_text(d, "off101", ".age"))
    assert age.endswith("秒前")  # the last heartbeat's age, counted on in the page with no message
    wait(chromium, lambda d: tile_text(d, "off101", ".age") != age, LIVE)
    assert wait(chromium, lambda d: alert_item(d, "off101", "offline: Last Will"), LIVE)


def test_an_alert_shows_and_is_acknowledged_on_every_board(site: Site, chromium: Any, rooms: Callable) -> None:
    agent = rooms("cam101", CAMERA)
    open_page(chromium, site.url)
    chromium.execute_script("localStorage.clear()")
    open_page(chromium, site.url)
    first = chromium.current_window_handle
    wait(chromium, lambda d: tile_state(d, "cam101") == "online", SETUP)

    agent.call("sim", words=["camera", "black"])
    n = int(wait(chromium, lambda d: (li := alert_item(d, "cam101", "camera: fault (dark)")) and li.get_attribute(
        "data-n"), LIVE, "the covered camera's alert is not in the list 2 s after the cause"))
    button = f'#alerts li[data-n="{n}"] button.ack'
    assert read(chromium, lambda d: d.find_element(By.CSS_SELECTOR, button).text) == "确认"
    wait(chromium, lambda d: tile_state(d, "cam101") == "alert")

    chromium.switch_to.new_window("tab")  # a second board, as on the duty officer's laptop
    open_page(chromium, site.url)
    second = chromium.current_window_handle
    chromium.switch_to.window(first)

    click(chromium, button)  # no name yet: the page asks for one and nothing is stored
    wait(chromium, lambda d: "请先填写值班人姓名" in d.find_element(By.ID, "ack-msg").text)
    assert next(a for a in site.store.alerts() if a["n"] == n)["acked_by"] is None

    chromium.find_element(By.ID, "ack-name").send_keys("王老师")
    click(chromium, button)
    shown = f'#alerts li[data-n="{n}"] .a-acked'
    acked = wait(chromium, lambda d: [e.text for e in d.find_elements(By.CSS_SELECTOR, shown)], LIVE,
                 "the acknowledgement is not shown 2 s after the click")[0]
    assert "王老师" in acked
    stored = next(a for a in site.store.alerts() if a["n"] == n)
    assert stored["acked_by"] == "王老师" and time.time() - stored["acked_at"] < 10
    assert in_zone(stored["acked_at"]) in acked
    log = site.store.log_entries("ack", 1)[0]
    assert (log["alert"], log["room"], log["by"]) == (n, "cam101", "王老师")

    chromium.switch_to.window(second)
    wait(chromium, lambda d: "王老师" in d.find_element(By.CSS_SELECTOR, f'#alerts li[data-n="{n}"]').text, LIVE,
         "the other board did not show the acknowledgement")
    chromium.close()
    chromium.switch_to.window(first)
    open_page(chromium, site.url)
    assert chromium.find_element(By.ID, "ack-name").get_attribute("value") == "王老师"  # kept for the next one


# -- the pages ---------------------------------------------------------------------------
def test_the_eight_room_view_shows_exactly_the_chosen_rooms(site: Site, chromium: Any, rooms: Callable) -> None:
    chosen = ["exp08", "exp02", "prx101", "exp05", "exp01", "exp07", "exp03", "exp04"]
    open_page(chromium, site.url + "proctor?rooms=" + ",".join(chosen))
    assert read(chromium, tile_ids) == chosen
    assert tile_state(chromium, "exp02") == "unknown" and "从未连接" in tile_text(chromium, "exp02")
    rooms("prx101")  # a chosen room that connects after the page opened comes alive there
    wait(chromium, lambda d: tile_state(d, "prx101") == "online", SETUP)
    assert read(chromium, tile_ids) == chosen

    open_page(chromium, site.url + "proctor/2")
    second_eight = sorted(r["room"] for r in site.store.rooms())[8:16]
    assert read(chromium, tile_ids) == second_eight


def test_the_room_page_shows_a_note_as_it_arrives(site: Site, chromium: Any, rooms: Callable) -> None:
    agent = rooms("note101")
    open_page(chromium, site.url)
    wait(chromium, lambda d: tile_state(d, "note101") == "online", SETUP)
    open_page(chromium, site.url + "room/note101")
    wait(chromium, lambda d: d.find_elements(By.CSS_SELECTOR, "#tile .tile"), SETUP)
    reply = agent.call("note", text="考场时钟已核对")
    kind, text = wait(chromium, lambda d: [(r.get_attribute("data-kind"), r.text) for r in d.find_elements(
        By.CSS_SELECTOR, f'#events tr[data-seq="{reply["seq"]}"]')], LIVE,
        "the note is not on the room page 2 s after it was recorded")[0]
    assert kind == "note" and "考场时钟已核对" in text
    ts = next(e["ts"] for e in site.store.recent_events("note101") if e["id"] == reply["id"])
    assert in_zone(ts) in text


def test_the_room_page_shows_record_attendance_gaps_and_flagged_events(site: Site, chromium: Any) -> None:
    room, ts = "seed01", "2026-06-08T07:30:00+00:00"
    site.seed_event(room, "attendance", {"session": "eng-am", "room": room, "time": 0, "cutoff": 0, "total": 30,
                                         "present": 28, "absent": ["7", "19"], "late_refused": ["19"],
                                         "manual_admissions": 1, "suspects": [], "pending_sweep": [],
                                         "complete": True, "seatplan_sha256": "x"}, 1, ts)
    site.seed_event(room, "session_record", {"session": "eng-am", "subject": "English", "total": 30, "present": 28,
                                             "absent": ["7", "19"], "late_refused": ["19"], "suspects": [],
                                             "incidents": [{"type": "audio_loss"}], "complete": True}, 2, ts)
    site.seed_event(room, "note", {"text": "late"}, 5, ts, problems=("data: 'author' is not a string",))
    with site.store.batch():
        site.store.add_gap(room, 3, 4, time.time())
        site.store.decide_gap(room, 3, "missing_evidence", time.time())
    open_page(chromium, site.url + "room/" + room)
    wait(chromium, lambda d: d.find_elements(By.CSS_SELECTOR, "#record .count"), SETUP)
    counts = read(chromium, lambda d: {c.get_attribute("data-key"): c.find_element(By.TAG_NAME, "dd").text
                                       for c in d.find_elements(By.CSS_SELECTOR, "#record .count")})
    assert {k: counts[k] for k in ("应到", "实到", "缺考", "迟到拒入", "存疑", "事件", "缺考座位")} == {
        "应到": "30", "实到": "28", "缺考": "2", "迟到拒入": "1", "存疑": "0", "事件": "1", "缺考座位": "7、19"}
    record = read(chromium, lambda d: d.find_element(By.ID, "record").text)
    assert "场次 eng-am English · 上报于 2026-06-08 15:30:00" in record
    assert "实到 28/30" in read(chromium, lambda d: d.find_element(By.ID, "attendance").text)
    cls, flagged = read(chromium, lambda d: (lambda r: (r.get_attribute("class"), r.text))(
        d.find_element(By.CSS_SELECTOR, '#events tr[data-seq="5"]')))
    assert "problem" in cls and "'author' is not a string" in flagged
    assert "2026-06-08 15:30:00" in flagged  # 07:30 UTC, in Beijing time
    gaps = read(chromium, lambda d: d.find_element(By.ID, "gaps").text)
    assert "3–4" in gaps and "missing_evidence" in gaps


def test_the_push_panel_shows_delivered_acknowledged_and_unacknowledged(site: Site, chromium: Any) -> None:
    pa, pb, pc = "pa101", "pb101", "pc101"
    with site.store.batch():
        site.store.record("push", {"push_id": "P-1", "text": "请各考场核对时钟", "rooms": [pa, pb, pc],
                                   "sent_at": "2026-06-08T15:00:00+08:00", "by": "考务办"})
    site.seed_event(pa, "push", {"push_id": "P-1", "text": "请各考场核对时钟"}, 1, "2026-06-08T07:00:02+00:00")
    site.seed_event(pa, "push_ack", {"push_id": "P-1", "by": "李老师", "after_s": 12.5}, 2, "2026-06-08T07:00:14+00:00")
    site.seed_event(pb, "push", {"push_id": "P-1", "text": "请各考场核对时钟"}, 1, "2026-06-08T07:00:03+00:00")
    open_page(chromium, site.url)

    def rows(d: Any) -> dict[str, tuple[str, str, str]]:
        """Each room's row: its state, its text, and the colour of its acknowledgement."""
        return {r.get_attribute("data-room"): (r.get_attribute("data-state"), r.text, r.find_element(
                    By.CSS_SELECTOR, "td.acked").value_of_css_property("color"))
                for r in d.find_elements(By.CSS_SELECTOR, 'section.push[data-push="P-1"] tr[data-room]')}

    shown = wait(chromium, rows, SETUP)
    assert {room: state for room, (state, _, _) in shown.items()} == {pa: "acked", pb: "delivered", pc: "pending"}
    assert "李老师 · 12.5 秒" in shown[pa][1] and "2026-06-08 15:00:02" in shown[pa][1]
    assert "未确认" in shown[pb][1] and "2026-06-08 15:00:03" in shown[pb][1]
    assert "未送达" in shown[pc][1] and "未确认" in shown[pc][1]
    assert shown[pb][2] == shown[pc][2] == RED and shown[pa][2] != RED  # who did not answer stands out
    meta = read(chromium, lambda d: d.find_element(By.CSS_SELECTOR, 'section.push[data-push="P-1"] .push-meta').text)
    assert meta == "P-1 · 考务办 发送于 2026-06-08 15:00:00 · 送达 2/3 · 确认 1/3"

    site.seed_event(pb, "push_ack", {"push_id": "P-1", "by": "赵老师", "after_s": 30.0}, 2, "2026-06-08T07:00:33+00:00")
    wait(chromium, lambda d: rows(d)[pb][0] == "acked", LIVE,
         "the acknowledgement is not in the push panel 2 s after it was stored")
    assert "赵老师 · 30.0 秒" in read(chromium, rows)[pb][1]


def test_the_joint_test_button_starts_one_and_shows_its_progress(site: Site, chromium: Any) -> None:
    bare = Board(site.app.cfg, site.store)  # a board with no joint testing wired says so
    bare.start()
    try:
        open_page(chromium, bare.url)
        chromium.find_element(By.ID, "jointtest-start").click()
        chromium.switch_to.alert.accept()
        wait(chromium, lambda d: "joint testing is not available here" in d.find_element(By.ID, "jointtest-msg").text)
        status, body = http(bare.url + "api/jointtest", "POST", b"")
        assert (status, body["error"]) == (503, "joint testing is not available here")
    finally:
        bare.stop()

    calls: list[list[str] | None] = []
    board = Board(site.app.cfg, site.store, lambda rooms: calls.append(rooms) or f"jt-{len(calls):04d}")
    board.start()
    try:
        open_page(chromium, board.url)
        chromium.find_element(By.ID, "jointtest-start").click()
        chromium.switch_to.alert.accept()
        wait(chromium, lambda d: "jt-0001" in d.find_element(By.ID, "jointtest-msg").text)
        assert calls == [None]
        with site.store.batch():
            site.store.record("jointtest", {"run": "jt-0001", "state": "running", "done": 3, "total": 8,
                                            "passed": None, "report": ""})
        wait(chromium, lambda d: "jt-0001：进行中 3/8" in d.find_element(By.ID, "jointtest").text, LIVE)
        with site.store.batch():
            site.store.record("jointtest", {"run": "jt-0001", "state": "done", "done": 8, "total": 8, "passed": False,
                                            "report": "/var/lib/examroom-site/jt-0001.json"})
        wait(chromium, lambda d: "已完成 8/8 · 未通过 · 报告 /var/lib/examroom-site/jt-0001.json"
             in d.find_element(By.ID, "jointtest").text, LIVE)
        assert http(board.url + "api/jointtest", "POST", b'{"rooms": ["exp01", "exp02"]}') == (202, {"run": "jt-0002"})
        assert calls[-1] == ["exp01", "exp02"]
        status, body = http(board.url + "api/jointtest", "POST", b'{"rooms": "exp01"}')
        assert status == 400 and "rooms" in body["error"] and len(calls) == 2
    finally:
        board.stop()
        board.stop()  # idempotent
    with pytest.raises(OSError):
        urllib.request.urlopen(board.url + "api/rooms", timeout=2)


def test_times_show_in_the_site_zone_not_the_browser_or_machine_zone(site: Site, chromium: Any) -> None:
    assert chromium.execute_script("return Intl.DateTimeFormat().resolvedOptions().timeZone") == "America/New_York"
    raised = datetime(2026, 6, 8, 7, 0, 0, tzinfo=timezone.utc).timestamp()
    with site.store.batch():
        site.store.room("tz101")
        n = site.store.raise_alert("tz101", "clock", "clock: fault (offset 2 s exceeds 0.5 s)", raised)
    site.app.board.rooms_changed({"tz101"})
    open_page(chromium, site.url)
    item = read(chromium, lambda d: d.find_element(By.CSS_SELECTOR, f'#alerts li[data-n="{n}"]').text)
    assert "2026-06-08 15:00:00" in item  # not 07:00 (UTC, the machine) nor 03:00 (the browser)
    assert "07:00:00" not in item and "03:00:00" not in item
    clock = read(chromium, lambda d: d.find_element(By.ID, "clock").text)
    assert clock.endswith("（Asia/Shanghai）")
    shown = datetime.strptime(clock.split("（")[0], "%Y-%m-%d %H:%M:%S").replace(tzinfo=SITE_ZONE)
    assert abs(shown.timestamp() - time.time()) < 5


# -- the API ---------------------------------------------------------------------------
def test_the_api_refuses_bad_requests_and_survives_them(site: Site) -> None:
    url = site.url
    assert http(url + "nope")[0] == 404
    status, body = http(url + "api/nope")
    assert status == 404 and "no such page" in body["error"]
    assert http(url + "api/rooms/nosuch")[0] == 404
    assert http(url + "room/nosuch")[0] == 404
    assert http(url + "static/..%2Fweb.py")[0] == 404
    assert http(url + "api/alerts/999999/ack", "POST", b'{"by": "x"}')[0] == 404
    with site.store.batch():
        site.store.room("api101")
        n = site.store.raise_alert("api101", "camera", "camera: fault (dark)", time.time())
    for bad in (b'{"by": ""}', b'{"by": "   "}', b"{}", b'{"by": 7}', b"", b"not json", b"[1]"):
        status, body = http(url + f"api/alerts/{n}/ack", "POST", bad)
        assert status == 400 and "error" in body, bad
    assert "required" in http(url + f"api/alerts/{n}/ack", "POST", b'{"by": ""}')[1]["error"]
    assert next(a for a in site.store.alerts() if a["n"] == n)["acked_by"] is None
    assert http(url + f"api/alerts/{n}/ack")[0] == 405
    assert http(url + "api/rooms", "POST", b"{}")[0] == 405
    nine = ",".join(EXPECTED[:9])
    assert http(url + f"proctor?rooms={nine}")[0] == 400
    assert http(url + "proctor?rooms=a%2Fb")[0] == 400
    assert http(url + "proctor")[0] == 400
    assert http(url + "proctor/0")[0] == 404 and http(url + "proctor/999")[0] == 404
    assert b"400" in raw_request(url, b"\x16\x03\x01 garbage\r\n\r\n")  # a TLS hello, or worse
    assert raw_request(url, b"POST /api/alerts/1/ack HTTP/1.0\r\nContent-Length: 99999999\r\n\r\n"
                       ).startswith(b"HTTP/1.0 400")
    status, body = http(url + "api/rooms")
    assert status == 200 and {r["room"] for r in body["rooms"]} >= set(EXPECTED)
    assert body["tz"] == "Asia/Shanghai"


def test_the_stream_sends_a_snapshot_then_changes_and_keepalives(site: Site, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(web_stream, "KEEPALIVE_S", 0.2)
    with urllib.request.urlopen(site.url + "api/stream", timeout=5) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")

        def next_message() -> tuple[str, Any]:
            lines = []
            while (line := r.readline().decode().rstrip("\n")) != "":
                lines.append(line)
            if lines and lines[0].startswith(":"):
                return "comment", lines[0]
            fields = dict(line.split(": ", 1) for line in lines if ": " in line)
            return fields.get("event", ""), json.loads(fields["data"]) if "data" in fields else None

        assert next_message() == ("", None)  # retry:
        kind, snap = next_message()
        assert kind == "snapshot" and snap["tz"] == "Asia/Shanghai"
        assert [t["room"] for t in snap["rooms"]] == sorted(r["room"] for r in site.store.rooms())
        assert {"alerts", "pushes", "jointtest", "now"} <= set(snap)
        seen = [next_message() for _ in range(3)]
        assert ("comment", ": keep-alive") in seen
        site.app.board.rooms_changed({"exp09"})
        kinds = [next_message() for _ in range(5)]
        tiles = [t for k, d in kinds if k == "update" for t in d.get("rooms", []) if t["room"] == "exp09"]
        assert tiles and tiles[0]["state"] == "unknown"


def test_another_sites_page_cannot_post_and_broadcast_is_no_room(site: Site) -> None:
    """A page elsewhere must not start a joint test in every room or acknowledge in someone's name."""
    calls: list[list[str] | None] = []
    board = Board(site.app.cfg, site.store, lambda rooms: calls.append(rooms) or "jt-x")
    board.start()
    try:
        status, body = http(board.url + "api/jointtest", "POST", b"", origin="http://evil.example")
        assert (status, body["error"]) == (403, "a request from another site's page is refused") and calls == []
        own = board.url.rstrip("/")
        assert http(board.url + "api/jointtest", "POST", b"", origin=own) == (202, {"run": "jt-x"})
        status, body = http(board.url + "api/jointtest", "POST", b'{"rooms": ["broadcast"]}', origin=own)
        assert status == 400 and "broadcast" in body["error"] and calls == [None]
        assert http(board.url + "api/jointtest", "POST", b'{"rooms": ["a,b"]}')[0] == 400
    finally:
        board.stop()
