"""The joint test's acceptance report, written three ways from one report dict.

``report.json`` for programs, ``report.csv`` for a spreadsheet (one row per room
and device or step), ``report.html`` for the paper record of the 联调验收: A4,
Chinese headings, what passed and failed per room and device with the values and
times, the rooms that never answered, the command round trip per room, and a line
to sign. The HTML is self-contained (no script, no external file) so it prints the
same from any browser on the site office's machine.
"""
from __future__ import annotations

import csv
import json
from datetime import datetime
from html import escape
from pathlib import Path
from typing import Any

CSV_COLUMNS = ("room", "step", "device", "result", "value", "time", "rtt_ms")
STEP_NAMES = {"selftest": "设备自检", "ping": "连通测试", "snapshot": "摄像抓拍", "trial": "试听"}
RESULT_NAMES = {"pass": "通过", "fail": "未通过", "no-answer": "无应答"}

CSS = """
@page { size: A4; margin: 15mm 12mm; }
body { font-family: "Noto Sans CJK SC", "Source Han Sans SC", "Microsoft YaHei", sans-serif; font-size: 10pt;
       color: #000; max-width: 186mm; margin: 0 auto; }
h1 { font-size: 16pt; text-align: center; margin: 0 0 4mm; }
h2 { font-size: 12pt; margin: 6mm 0 2mm; border-bottom: 1px solid #000; }
table { border-collapse: collapse; width: 100%; }
th, td { border: 1px solid #444; padding: 1mm 1.5mm; text-align: left; vertical-align: top; white-space: nowrap; }
td.v { white-space: normal; overflow-wrap: anywhere; width: 100%; }
th { background: #eee; }
thead { display: table-header-group; }
tr { page-break-inside: avoid; }
.fail, .no-answer { font-weight: bold; }
.meta td:first-child { width: 30mm; background: #f6f6f6; }
.sign { margin-top: 12mm; line-height: 3; }
.sign span { display: inline-block; width: 60mm; border-bottom: 1px solid #000; }
"""


def write_reports(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write report.json, report.csv and report.html into ``out`` (made if missing)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "csv": out / "report.csv", "html": out / "report.html"}
    paths["json"].write_text(json.dumps(report, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    with paths["csv"].open("w", encoding="utf-8-sig", newline="") as f:  # the BOM: Excel reads UTF-8
        w = csv.DictWriter(f, fieldnames=CSV_COLUMNS)
        w.writeheader()
        for room in report["rooms"]:
            for row in room["rows"]:
                w.writerow({k: "" if row[k] is None else row[k] for k in CSV_COLUMNS})
    paths["html"].write_text(html(report), encoding="utf-8")
    return paths


def _clock(iso: str) -> str:
    """A time of day as the person signing reads it (already in the site's zone)."""
    return datetime.fromisoformat(iso).strftime("%H:%M:%S")


def _ms(v: Any) -> str:
    return "—" if v is None else f"{v:.0f}"


def _table(head: list[str], rows: list[list[str]], classes: list[str] | None = None,
           wrap: int | None = None) -> str:
    """Cells are already escaped by the caller; only column ``wrap`` (the long one) wraps."""
    def cell(j: int, c: str) -> str:
        return f'<td class="v">{c}</td>' if j == wrap else f"<td>{c}</td>"

    body = "".join(f'<tr class="{classes[i] if classes else ""}">' + "".join(cell(j, c) for j, c in enumerate(r))
                   + "</tr>" for i, r in enumerate(rows))
    return f"<table><thead><tr>{''.join(f'<th>{h}</th>' for h in head)}</tr></thead><tbody>{body}</tbody></table>"


def _rooms(names: list[str]) -> str:
    return escape("、".join(names)) if names else "无"


def html(report: dict[str, Any]) -> str:
    site, rooms = report["site"], report["rooms"]
    started = datetime.fromisoformat(report["started"])
    passed = [r["room"] for r in rooms if r["passed"]]
    verdict = "全部通过" if report["passed"] else f"未通过（{len(rooms) - len(passed)} 个考场）"
    meta = [["考点", escape(f"{site['name']}（{site['id']}）" if site.get("name") else site["id"])],
            ["日期", started.strftime("%Y-%m-%d")],
            ["时间", f"{_clock(report['started'])} – {_clock(report['finished'])}（{escape(site['timezone'])}）"],
            ["执行人", escape(report["by"] or "—")],
            ["测试项目", escape("、".join(STEP_NAMES.get(s, s) for s in report["steps"]))],
            ["考场数", f"{len(rooms)}（通过 {len(passed)}，未通过 {len(report['failed'])}，"
                      f"无应答 {len(report['no_answer'])}）"],
            ["结论", f"<b>{verdict}</b>"]]
    rtt = [[escape(r["room"]), str(r["rtt_ms"]["n"]), _ms(r["rtt_ms"]["p50"]), _ms(r["rtt_ms"]["max"]),
            "通过" if r["passed"] else ("无应答" if not r["answered"] else "未通过")] for r in rooms]
    detail, classes = [], []
    for r in rooms:
        for row in r["rows"]:
            detail.append([escape(row["room"]), STEP_NAMES.get(row["step"], escape(row["step"])),
                           escape(row["device"] or "—"), RESULT_NAMES.get(row["result"], escape(row["result"])),
                           escape(row["value"]), _clock(row["time"]), _ms(row["rtt_ms"])])
            classes.append(row["result"])
    parts = [
        "<!DOCTYPE html>", '<html lang="zh-CN"><head><meta charset="utf-8">',
        f"<title>联调验收记录 {escape(site['id'])} {started.strftime('%Y-%m-%d')}</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>标准化考场联调验收记录</h1>",
        '<table class="meta"><tbody>' + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in meta)
        + "</tbody></table>",
        "<h2>无应答考场</h2>", f'<p id="no-answer">{_rooms(report["no_answer"])}</p>',
        "<h2>未通过考场</h2>", f'<p id="failed">{_rooms(report["failed"])}</p>',
        f"<h2>指令往返时间（毫秒，每考场 ping {report['pings']} 次）</h2>",
        _table(["考场", "应答次数", "中位数", "最大值", "结果"], rtt),
        "<h2>各考场设备测试明细</h2>",
        _table(["考场", "项目", "设备", "结果", "测量值 / 原因", "时间", "往返(ms)"], detail, classes, wrap=4),
        '<div class="sign">',
        "技术人员签字：<span></span>　　考点负责人签字：<span></span><br>",
        "日期：<span></span>",
        "</div>",
        f"<p><small>运行编号 {escape(report['run'])}；时间为 {escape(site['timezone'])} 时区；"
        f"单步应答超时 {report['timeout_s']:g} 秒；试听 {report['trial_seconds']} 秒。"
        "机器可读版本：report.json、report.csv。</small></p>",
        "</body></html>",
    ]
    return "\n".join(parts) + "\n"
