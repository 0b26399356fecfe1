"""The room record card (考场记事卡), printable: the session record laid out as the paper card.

Proctors fill in the card at the end of each session and sign it: the site, room,
subject and time, how many were due and how many sat, the absent seats (缺考), the
violations by the province's fact codes (违纪/违规), the remarks (备注: a broadcast
lost, the clock stepped, who was refused late or is still in doubt) and their
signatures. The box writes the same card from the record's JSON document, so what
is printed is what the record says: an A4 HTML page beside the record files
(``<session>-<room>.html``, its SHA-256 in the record's ``files``), self-contained
(inline CSS, no script, no external file) so any browser on the site office's
machine prints it the same. ``examroom-agent record card`` prints it again from the
JSON.

No candidate's name appears on it, nor an ID number: seats and admission ticket
numbers only (the card travels through more hands than the box's files). Times are
in the exam's zone (``[procedure] timezone``), whatever the box's own zone is.
"""
from __future__ import annotations

from datetime import datetime, tzinfo
from html import escape
from typing import Any
from zoneinfo import ZoneInfo

from examroom.agent.session_book import SessionBook
from examroom.contract.times import epoch
from examroom.contract.vocabulary import AudioFeed, IncidentType

CSS = """
@page { size: A4; margin: 15mm 12mm; }
body { font-family: "Noto Sans CJK SC", "Source Han Sans SC", "Microsoft YaHei", "SimSun", sans-serif;
       font-size: 10.5pt; color: #000; max-width: 186mm; margin: 0 auto; }
h1 { font-size: 18pt; text-align: center; letter-spacing: 4pt; margin: 0 0 5mm; }
h2 { font-size: 12pt; margin: 5mm 0 2mm; border-bottom: 1px solid #000; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #444; padding: 1.2mm 1.5mm; text-align: left; vertical-align: top; }
th { background: #eee; white-space: nowrap; }
thead { display: table-header-group; }
tr { page-break-inside: avoid; }
.meta th { width: 22mm; }
.none { margin: 1mm 0 0 2mm; }
ul { margin: 1mm 0; padding-left: 6mm; }
.sign { margin-top: 10mm; line-height: 3.2; page-break-inside: avoid; }
.sign span { display: inline-block; width: 50mm; border-bottom: 1px solid #000; margin-right: 8mm; }
.foot { margin-top: 6mm; font-size: 8pt; color: #333; }
"""
CAUSES = {AudioFeed.SILENCE: "无声", AudioFeed.NO_INPUT: "无输入"}
INCIDENT_NAMES = {IncidentType.AUDIO_LOSS: "统一音源中断", IncidentType.CLOCK_STEP: "时钟跳变",
                  IncidentType.TRIAL_LISTENING: "试听", IncidentType.VIOLATION: "违规报告",
                  IncidentType.PLAN_CHECK: "座次表核验"}


class RecordCard:
    def __init__(self, site: str, room: str, zone: tzinfo, signatures: int = 2) -> None:
        """``site`` and ``room`` as the card's header shows them; ``signatures``: how many
        proctors sign (``[procedure] proctors_required``)."""
        self.site = site
        self.room = room
        self.zone = zone
        self.signatures = signatures

    @classmethod
    def for_config(cls, cfg: Any) -> "RecordCard":
        """The card of this box's room: the daemon writes it, the CLI prints it again."""
        site, room = cfg.site, cfg.room
        return cls(f"{site['name']}（{site['id']}）" if site["name"] else site["id"],
                   f"{room['label']}（{room['id']}）" if room["label"] else room["id"],
                   ZoneInfo(cfg.procedure["timezone"]), cfg.procedure["proctors_required"])

    def attach(self, book: SessionBook | None) -> None:
        """Every record the room's session book writes gets its card (no book: no records)."""
        if book is not None:
            book.add_printout(self.printout)

    def printout(self, doc: dict[str, Any]) -> tuple[str, str]:
        """The card beside the record, as ``<session>-<room>.html``."""
        return ".html", self.html(doc)

    # -- times ------------------------------------------------------------------------------

    def _at(self, v: Any) -> datetime | None:
        """A record's time (ISO 8601 with offset, or epoch seconds) in the exam's zone."""
        t = epoch(v)
        return datetime.fromtimestamp(t, self.zone) if t is not None else None

    def _clock(self, v: Any) -> str:
        t = self._at(v)
        return t.strftime("%H:%M:%S") if t else "—"

    def _span(self, start: Any, end: Any) -> str:
        """``2026-06-07 09:00–11:00``; the end's date too when the session crosses midnight."""
        a, b = self._at(start), self._at(end)
        if a is None or b is None:
            return "—"
        tail = b.strftime("%H:%M") if a.date() == b.date() else b.strftime("%Y-%m-%d %H:%M")
        return f"{a.strftime('%Y-%m-%d %H:%M')}–{tail}"

    # -- the card -----------------------------------------------------------------------------

    def html(self, doc: dict[str, Any]) -> str:
        session, summary = doc["session"], doc["summary"]
        tickets = {c["seat"]: c.get("ticket") or "" for c in doc.get("candidates", [])}
        absent = summary.get("absent", [])
        violations = doc.get("violations", [])
        meta = [("考点", escape(self.site), "考场", escape(self.room)),
                ("科目", escape(str(session["subject"])), "考试时间", self._span(session["start"], session["end"])),
                ("应考人数", str(summary["total"]), "实考人数", str(summary["present"]))]
        parts = [
            "<!DOCTYPE html>", '<html lang="zh-CN"><head><meta charset="utf-8">',
            f"<title>考场记事卡 {escape(str(session['id']))} {escape(str(doc['room']))}</title>",
            f"<style>{CSS}</style></head><body>",
            "<h1>考场记事卡</h1>",
            '<table class="meta"><tbody>'
            + "".join(f"<tr><th>{a}</th><td>{b}</td><th>{c}</th><td>{d}</td></tr>" for a, b, c, d in meta)
            + "</tbody></table>",
            f"<h2>缺考考生（{len(absent)} 人）</h2>",
            _table(["座位号", "准考证号"], [[escape(s), escape(tickets.get(s, ""))] for s in absent], "absent"),
            f"<h2>违纪/违规（{len(violations)} 起）</h2>",
            _table(["时间", "座位号", "准考证号", "代码", "违规事实", "说明", "记录人", "报告考务办公室"],
                   [[self._clock(v["time"]), escape(v["seat"]), escape(v.get("ticket") or ""), escape(v["code"]),
                     escape(v["text"]), escape(v.get("note", "")), escape(v["by"]),
                     "已报告" if v["escalated"] else "—"] for v in violations], "violations"),
            "<h2>备注</h2>",
            self._remarks(doc, tickets),
            '<div class="sign">',
            "监考员签名：" + "<span></span>" * self.signatures + "<br>",
            "日期：<span></span>",
            "</div>",
            f'<p class="foot">场次 {escape(str(session["id"]))}；时间为 {escape(_zone_name(self.zone))} 时区；'
            f"记录写成于 {self._moment(doc.get('written_at'))}"
            + (f"；座次表 SHA-256 {escape(doc['seatplan']['sha256'])}" if doc.get("seatplan") else "")
            + "。本卡由考场记录生成，不含考生姓名与身份证号。</p>",
            "</body></html>",
        ]
        return "\n".join(parts) + "\n"

    def _moment(self, v: Any) -> str:
        t = self._at(v)
        return t.strftime("%Y-%m-%d %H:%M:%S") if t else "—"

    def _remarks(self, doc: dict[str, Any], tickets: dict[str, str]) -> str:
        """备注: the record's incidents, then who was turned away or is still in doubt."""
        summary = doc["summary"]
        items = [self._incident(i) for i in doc.get("incidents", [])]

        def seats(key: str, label: str) -> None:
            found = summary.get(key) or []
            if found:
                items.append(f"{label}：" + "、".join(f"{escape(s)}号（{escape(tickets.get(s, ''))}）" for s in found))

        seats("late_refused", "迟到未准入考场")
        seats("suspects", "身份存疑未确认")
        seats("identity_refused", "身份核验未通过")
        if summary.get("manual_admissions"):
            items.append(f"人工核验入场 {summary['manual_admissions']} 人（证件无法读取）")
        if summary.get("complete") is False:
            items.append("本记录不完整：考场终端在入场开始后才启动")
        if not items:
            return '<p class="none" id="remarks">无</p>'
        return '<ul id="remarks">' + "".join(f"<li>{i}</li>" for i in items) + "</ul>"

    def _incident(self, inc: dict[str, Any]) -> str:
        """One incident of the record as a remark; a type this card does not know by its name."""
        kind = str(inc.get("type", ""))
        name = INCIDENT_NAMES.get(kind, escape(kind))
        at = self._clock(inc.get("start", inc.get("time", inc.get("recorded_at"))))

        def field(key: str) -> str:
            return escape(str(inc.get(key, "")))

        if kind == IncidentType.AUDIO_LOSS:
            cause = CAUSES.get(str(inc.get("cause")), field("cause"))
            return (f"{name} {at}–{self._clock(inc.get('end'))}（{inc.get('duration_s', '—')} 秒，"
                    f"设备 {field('device')}，{cause}）")
        if kind == IncidentType.CLOCK_STEP:
            return f"{name} {at}（{inc.get('stepped_s', 0):+.3f} 秒，时钟源 {field('source')}）"
        if kind == IncidentType.TRIAL_LISTENING:
            problems = "、".join(escape(str(p)) for p in inc.get("problems") or [])
            return (f"{name}{'通过' if inc.get('pass') else '未通过'} {at}（{field('source')}）"
                    + (f"：{problems}" if problems else ""))
        if kind == IncidentType.VIOLATION:
            return f"{field('seat')}号座位违规（{field('code')}）已即时报告考务办公室 {at}"
        return f"{name} {at}（详见考场记录文件）"


def _table(head: list[str], rows: list[list[str]], ident: str) -> str:
    """Cells are escaped by the caller; an empty list reads 无, as a proctor writes it."""
    if not rows:
        return f'<p class="none" id="{ident}">无</p>'
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows)
    return (f'<table id="{ident}"><thead><tr>{"".join(f"<th>{h}</th>" for h in head)}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def _zone_name(zone: tzinfo) -> str:
    return str(getattr(zone, "key", zone))
