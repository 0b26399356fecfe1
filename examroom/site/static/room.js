"use strict";
// One room (/room/{room}): its tile, session record and attendance, alerts, gaps and timeline.
// Redrawn from /api/rooms/{room} whenever the stream says the room changed.

const ROOM = boot.room;
let pending = null;

function row(cells, attrs) {
  return el("tr", attrs || {}, cells.map((c) => el("td", {}, c)));
}

function table(id, head, rows, empty) {
  const box = document.getElementById(id);
  if (!rows.length) return box.replaceChildren(el("p", {class: "empty"}, empty));
  box.replaceChildren(el("table", {}, el("thead", {}, el("tr", {}, head.map((h) => el("th", {}, h)))),
    el("tbody", {}, rows)));
}

function renderRecord(r) {
  const box = document.getElementById("record");
  if (!r) return box.replaceChildren(el("p", {class: "empty"}, "尚无考场记录（场次结束后由考场上报）"));
  const partial = r.complete === false ? " · 不完整（考场在入场开始后才启动）" : "";
  box.replaceChildren(
    el("p", {}, `场次 ${r.session ?? "?"} ${r.subject ?? ""} · 上报于 ${fmtTime(r.ts)}${partial}`),
    el("dl", {class: "counts"}, [["应到", r.total], ["实到", r.present], ["缺考", r.absent],
      ["迟到拒入", r.late_refused], ["存疑", r.suspects], ["事件", r.incidents],
      ["缺考座位", (r.absent_seats || []).join("、") || "无"]]
      .map(([k, v]) => el("div", {class: "count", "data-key": k}, el("dt", {}, k), el("dd", {}, v ?? "?")))));
}

function renderAttendance(a, exam) {
  const parts = [];
  if (exam) parts.push(el("p", {}, `当前：${examLine(exam)}`));
  if (a) {
    const list = (k) => (Array.isArray(a[k]) ? a[k].join("、") || "无" : "?");
    parts.push(el("p", {}, `考勤（${a.session ?? "?"}，${fmtTime(a.ts)}）：实到 ${a.present ?? "?"}/${a.total ?? "?"}`
      + ` · 缺考 ${list("absent")} · 迟到拒入 ${list("late_refused")} · 存疑 ${list("suspects")}`));
  }
  document.getElementById("attendance").replaceChildren(...(parts.length ? parts
    : [el("p", {class: "empty"}, "尚无考勤")]));
}

function render(d) {
  const t = d.tile;
  document.getElementById("title").textContent = `${t.room} ${t.label || ""}`;
  document.title = `考场 ${t.room}`;
  document.getElementById("tile").replaceChildren(renderTile(t));
  renderRecord(d.session_record);
  renderAttendance(d.attendance, t.exam);
  table("alerts", ["发生", "告警", "恢复", "确认"], d.alerts.map((a) => row([fmtTime(a.raised), a.text,
    a.cleared ? fmtTime(a.cleared) : "未恢复", a.acked_by ? `${a.acked_by} · ${fmtTime(a.acked_at)}` : "未确认"],
    {"data-n": a.n, class: a.acked_by ? "acked" : "unacked"})), "没有告警");
  table("gaps", ["序号", "发现", "结论", "判定"], d.gaps.map((g) => row([`${g.first}–${g.last}`,
    fmtTime(g.opened), g.verdict, fmtTime(g.decided)], {class: `gap-${g.verdict}`})), "没有缺号");
  table("events", ["时间", "序号", "类型", "内容", "问题"], d.events.map((e) => row([fmtTime(e.ts), e.seq,
    e.kind + (e.replayed ? "（补发）" : ""), e.summary, e.problems.join("；")],
    {"data-seq": e.seq, "data-kind": e.kind, class: e.problems.length ? "problem" : null})), "尚无事件");
}

async function load() {
  pending = null;
  const r = await fetch(`/api/rooms/${encodeURIComponent(ROOM)}`);
  if (r.ok) render(await r.json());
}

/** Changes come in bursts (an event, then the heartbeat): one fetch for each burst. */
function later() {
  if (!pending) pending = setTimeout(load, 150);
}

startHeader();
connect({
  snapshot: () => load(),
  update: (d) => {
    if ((d.rooms || []).some((t) => t.room === ROOM) || (d.alerts || []).some((a) => a.room === ROOM)) later();
  },
});
