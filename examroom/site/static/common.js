"use strict";
// The board's shared parts: the site's time zone, times and ages, room tiles, the live stream.
// Every time a person reads is in the site's zone (boot.tz), never this browser's.

const boot = JSON.parse(document.body.dataset.boot);
const TZ = boot.tz;
let skew = 0; // the server's clock minus this browser's, seconds: ages count on the server's clock

const STATE_TEXT = {online: "在线", alert: "告警", offline: "离线", unknown: "从未连接"};
const DEVICE_STATE = {ok: "正常", absent: "缺失", fault: "故障", stopped: "停止"};
const KIND_TEXT = {audio: "统一音源", camera: "摄像头", clock: "时钟", idcard: "身份证阅读器",
                   metal_detector: "金属探测仪", pcsc: "读卡器"};
const PHASE_TEXT = {before_entry: "未开始入场", entry: "入场中", in_progress: "考试中",
                    cutoff_passed: "已过入场截止", ended: "已结束"};

const zoned = new Intl.DateTimeFormat("zh-CN", {
  timeZone: TZ, year: "numeric", month: "2-digit", day: "2-digit",
  hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23"});

function zonedParts(date) {
  const p = {};
  for (const x of zoned.formatToParts(date)) p[x.type] = x.value;
  return p;
}

function toDate(t) {
  return typeof t === "number" ? new Date(t * 1000) : new Date(t);
}

/** Epoch seconds or an ISO 8601 string as "2026-06-08 15:00:00" in the site's zone. */
function fmtTime(t) {
  if (t === null || t === undefined || t === "") return "—";
  const d = toDate(t);
  if (isNaN(d)) return String(t);
  const p = zonedParts(d);
  return `${p.year}-${p.month}-${p.day} ${p.hour}:${p.minute}:${p.second}`;
}

/** As fmtTime, without the date when it is today's (in the site's zone): for narrow columns. */
function fmtShort(t) {
  const full = fmtTime(t);
  return full.slice(0, 10) === fmtTime(serverNow()).slice(0, 10) ? full.slice(11) : full;
}

function fmtAge(seconds) {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return `${s} 秒前`;
  if (s < 3600) return `${Math.floor(s / 60)} 分 ${s % 60} 秒前`;
  return `${Math.floor(s / 3600)} 小时 ${Math.floor((s % 3600) / 60)} 分前`;
}

function serverNow() {
  return Date.now() / 1000 + skew;
}

function ageText(at) {
  return at ? fmtAge(serverNow() - at) : "从未收到";
}

/** A DOM element; text goes in as text, never as HTML (room labels and alerts come from the rooms). */
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") e.className = v;
    else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
    else e.setAttribute(k, v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    e.append(c instanceof Node ? c : String(c));
  }
  return e;
}

function deviceLine(d) {
  const reason = d.reason ? `（${d.reason}）` : "";
  return el("li", {class: `dev dev-${d.state}`, "data-device": d.name, title: d.reason || null},
    `${KIND_TEXT[d.kind] || d.kind} ${d.name}：${DEVICE_STATE[d.state] || d.state}${reason}`);
}

function examLine(exam) {
  if (!exam) return "无考试场次";
  const phase = PHASE_TEXT[exam.phase] || exam.phase;
  const listening = exam.listening ? " · 听力播放中" : "";
  const session = exam.session ? exam.session + " · " : "";
  return `${session}${phase}${listening} · 已入场 ${exam.admitted ?? "?"}/${exam.total ?? "?"}`;
}

/** One room's tile; a room without a row yet is a placeholder in state "unknown". */
function renderTile(t) {
  return el("article", {class: `tile state-${t.state}`, "data-room": t.room, "data-state": t.state},
    el("header", {class: "tile-head"},
      el("a", {class: "room-id", href: `/room/${encodeURIComponent(t.room)}`}, t.room),
      el("span", {class: "state"}, STATE_TEXT[t.state] || t.state)),
    el("div", {class: "label"}, t.label || ""),
    el("div", {class: "hb"}, "心跳 ", el("span", {class: "age", "data-at": t.heartbeat_at ?? ""},
      ageText(t.heartbeat_at))),
    t.state === "offline" && t.offline_why ? el("div", {class: "why"}, t.offline_why) : null,
    el("div", {class: "exam"}, examLine(t.exam)),
    t.spool > 0 ? el("div", {class: "spool"}, `待上传事件 ${t.spool} 条`) : null,
    el("ul", {class: "devices"}, (t.devices || []).map(deviceLine)),
    (t.incidents || []).length ? el("ul", {class: "incidents"},
      t.incidents.map((i) => el("li", {}, `事件：${i.text} · ${fmtShort(i.raised)}`))) : null,
    (t.alerts || []).length ? el("ul", {class: "room-alerts"}, t.alerts.map((a) => el("li", {}, a))) : null);
}

function placeholder(room) {
  return {room, label: "", state: "unknown", heartbeat_at: null, devices: [], incidents: [], alerts: [], exam: null};
}

/** The tiles in a container: all rooms in order, or only ``only`` (in its order, placeholders first). */
function tileGrid(container, only) {
  const data = new Map();
  const nodes = new Map();
  function drawAll() {
    const order = only || [...data.keys()].sort();
    nodes.clear();
    container.replaceChildren(...order.map((room) => {
      const node = renderTile(data.get(room) || placeholder(room));
      nodes.set(room, node);
      return node;
    }));
  }
  function put(t) {
    if (only && !only.includes(t.room)) return;
    const fresh = !data.has(t.room) && !only;
    data.set(t.room, t);
    if (fresh || !nodes.has(t.room)) return drawAll();
    const node = renderTile(t);
    nodes.get(t.room).replaceWith(node);
    nodes.set(t.room, node);
  }
  function reset(tiles) {
    data.clear();
    for (const t of tiles) if (!only || only.includes(t.room)) data.set(t.room, t);
    drawAll();
  }
  return {put, reset, rooms: () => [...data.keys()].sort()};
}

function setLive(live) {
  document.body.dataset.live = live ? "1" : "0";
  const banner = document.getElementById("conn");
  if (banner) banner.hidden = live;
}

/** The live stream: a snapshot on (re)connect, then updates; the browser reconnects by itself.
 * Closed when the page is left: a browser opens only six connections to one server over HTTP/1.1,
 * and a page kept in the back-forward cache would hold its stream open. */
function connect(handlers) {
  let es = null;
  const take = (kind) => (e) => {
    const d = JSON.parse(e.data);
    skew = d.now - Date.now() / 1000;
    if (kind === "snapshot") setLive(true);
    handlers[kind](d);
  };
  function open() {
    es = new EventSource("/api/stream");
    es.addEventListener("snapshot", take("snapshot"));
    es.addEventListener("update", take("update"));
    es.onerror = () => setLive(false);
  }
  window.addEventListener("pagehide", () => es.close());
  window.addEventListener("pageshow", (e) => { if (e.persisted) open(); });
  open();
}

/** Heartbeat ages and the clock move every second, between the server's messages. */
function tick() {
  for (const span of document.querySelectorAll(".age")) {
    const at = parseFloat(span.dataset.at);
    span.textContent = isNaN(at) ? "从未收到" : fmtAge(serverNow() - at);
  }
  const clock = document.getElementById("clock");
  if (clock) clock.textContent = `${fmtTime(serverNow())}（${TZ}）`;
}

function startHeader() {
  const site = document.getElementById("site");
  if (site) site.textContent = boot.site;
  tick();
  setInterval(tick, 1000);
}
