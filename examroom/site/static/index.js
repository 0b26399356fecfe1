"use strict";
// The whole site (/): room tiles, alerts needing a person, the push panel, the joint test.

const NAME_KEY = "examroom.board.name";
const grid = tileGrid(document.getElementById("tiles"), null);
const nameInput = document.getElementById("ack-name");
let alerts = [];

nameInput.value = localStorage.getItem(NAME_KEY) || "";
nameInput.addEventListener("input", () => localStorage.setItem(NAME_KEY, nameInput.value.trim()));

function say(id, text, bad) {
  const box = document.getElementById(id);
  box.textContent = text;
  box.classList.toggle("bad", !!bad);
}

async function postJson(url, body) {
  const r = await fetch(url, {method: "POST", headers: {"Content-Type": "application/json"},
                              body: body === undefined ? "" : JSON.stringify(body)});
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(data.error || `HTTP ${r.status}`);
  return data;
}

async function ack(n, button) {
  const by = nameInput.value.trim();
  if (!by) {
    say("ack-msg", "请先填写值班人姓名，再确认告警", true);
    nameInput.focus();
    return;
  }
  button.disabled = true;
  try {
    const data = await postJson(`/api/alerts/${n}/ack`, {by});
    alerts = alerts.map((a) => (a.n === n ? data.alert : a));
    renderAlerts();
    say("ack-msg", `告警 ${n} 已由 ${by} 确认`, false);
  } catch (e) {
    say("ack-msg", `确认失败：${e.message}`, true);
    button.disabled = false;
  }
}

function alertItem(a) {
  const status = a.cleared ? el("span", {class: "a-cleared"}, `已恢复 ${fmtTime(a.cleared)}`)
                           : el("span", {class: "a-open"}, "未恢复");
  const acked = a.acked_by
    ? el("span", {class: "a-acked"}, `已确认：${a.acked_by} · ${fmtTime(a.acked_at)}`)
    : el("button", {class: "ack", type: "button", onclick: (e) => ack(a.n, e.currentTarget)}, "确认");
  return el("li", {class: `alert ${a.acked_by ? "acked" : "unacked"}`, "data-n": a.n, "data-room": a.room},
    el("a", {class: "a-room", href: `/room/${encodeURIComponent(a.room)}`}, a.room),
    el("span", {class: "a-text"}, a.text),
    el("span", {class: "a-time"}, `发生 ${fmtTime(a.raised)}`), status, acked);
}

function renderAlerts() {
  const list = [...alerts].sort((a, b) => (a.acked_by ? 1 : 0) - (b.acked_by ? 1 : 0) || b.raised - a.raised);
  document.getElementById("alert-count").textContent = String(list.filter((a) => !a.acked_by).length);
  document.getElementById("alerts").replaceChildren(...(list.length ? list.map(alertItem)
    : [el("li", {class: "empty"}, "暂无需要处理的告警")]));
}

function pushRow(r) {
  const delivered = r.delivered_at ? fmtShort(r.delivered_at) : "未送达";
  const after = typeof r.after_s === "number" ? ` · ${r.after_s.toFixed(1)} 秒` : "";
  const acked = r.state === "acked" ? `${r.acked_by}${after}` : "未确认";
  return el("tr", {class: `push-${r.state}`, "data-room": r.room, "data-state": r.state},
    el("td", {}, r.room), el("td", {class: "delivered"}, delivered), el("td", {class: "acked"}, acked));
}

/** Rooms that did not answer first: with a hundred rooms, they are what a person looks for. */
function byAnswer(a, b) {
  return (a.state === "acked") - (b.state === "acked") || a.room.localeCompare(b.room);
}

function renderPushes(pushes) {
  const box = document.getElementById("pushes");
  if (!pushes.length) return box.replaceChildren(el("p", {class: "empty"}, "暂无指令推送"));
  box.replaceChildren(...pushes.map((p) => el("section", {class: "push", "data-push": p.push_id},
    el("h3", {}, p.text || p.push_id),
    el("p", {class: "push-meta"}, `${p.push_id} · ${p.by ? p.by + " " : ""}发送于 ${fmtTime(p.sent_at)}`
      + ` · 送达 ${p.delivered}/${p.rooms.length} · 确认 ${p.acked}/${p.rooms.length}`),
    el("table", {}, el("thead", {}, el("tr", {}, el("th", {}, "考场"), el("th", {}, "送达时间"), el("th", {}, "确认人 · 用时"))),
      el("tbody", {}, [...p.rooms].sort(byAnswer).map(pushRow))))));
}

function renderJointTest(j) {
  const box = document.getElementById("jointtest");
  box.dataset.state = j ? j.state : "none";
  if (!j) return (box.textContent = "尚未进行联调");
  const verdict = j.passed === true ? " · 通过" : j.passed === false ? " · 未通过" : "";
  box.textContent = `${j.run}：${j.state === "running" ? "进行中" : "已完成"} ${j.done ?? "?"}/${j.total ?? "?"}`
    + `${verdict}${j.report ? " · 报告 " + j.report : ""} · ${fmtTime(j.at)}`;
}

async function startJointTest(button) {
  if (!window.confirm("开始对全部考场联调？")) return;
  button.disabled = true;
  try {
    say("jointtest-msg", `联调已开始：${(await postJson("/api/jointtest")).run}`, false);
  } catch (e) {
    say("jointtest-msg", `无法开始联调：${e.message}`, true);
  } finally {
    button.disabled = false;
  }
}

function renderGroups() {
  const rooms = grid.rooms();
  const links = [];
  for (let i = 0; i < rooms.length; i += 8) {
    const g = rooms.slice(i, i + 8);
    links.push(el("a", {href: `/proctor/${i / 8 + 1}`}, `第 ${i / 8 + 1} 组：${g[0]}–${g[g.length - 1]}`));
  }
  document.getElementById("groups").replaceChildren(...links);
}

function apply(d, full) {
  if (full) grid.reset(d.rooms);
  else for (const t of d.rooms || []) grid.put(t);
  if (full || d.rooms) renderGroups();
  if (d.alerts) {
    alerts = d.alerts;
    renderAlerts();
  }
  if (d.pushes) renderPushes(d.pushes);
  if (full || "jointtest" in d) renderJointTest(d.jointtest);
}

document.getElementById("jointtest-start").addEventListener("click", (e) => startJointTest(e.currentTarget));
startHeader();
connect({snapshot: (d) => apply(d, true), update: (d) => apply(d, false)});
