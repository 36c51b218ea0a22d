// Technician status page: store map (SVG, metres as user units) with live device dots over
// Server-Sent Events, health and activity panels, CSRF-protected actions.
// Every piece of data reaches the DOM through textContent or setAttribute - never an HTML parser -
// so a zone or campaign named "<img onerror=...>" is shown as text. No inline script or style
// (the CSP forbids both); colours come from CSS classes or SVG presentation attributes.
"use strict";
(function () {
  performance.mark("status-app-start");
  const SVGNS = "http://www.w3.org/2000/svg";
  const csrf = document.querySelector('meta[name="csrf-token"]').getAttribute("content");
  const map = document.getElementById("map");
  const layers = {};
  const dots = new Map(); // subject -> {dot, ring}
  const sensorBadges = new Map(); // sensor id -> text element
  const zoneLabels = new Map(); // zone id -> tspan (occupancy)
  let layout = null;
  let updates = 0;
  let coverageLoaded = false;

  // -- small DOM helpers --------------------------------------------------------------------
  function svg(tag, attrs, parent) {
    const e = document.createElementNS(SVGNS, tag);
    for (const k in attrs) e.setAttribute(k, String(attrs[k]));
    if (parent) parent.appendChild(e);
    return e;
  }
  function el(tag, text, cls) {
    const e = document.createElement(tag);
    if (text !== undefined && text !== null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  }
  function fmtAge(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "never";
    if (seconds < 60) return seconds.toFixed(0) + " s";
    if (seconds < 3600) return (seconds / 60).toFixed(0) + " min";
    return (seconds / 3600).toFixed(1) + " h";
  }
  function fmtTime(ts) {
    if (!ts) return "";
    return new Date(ts * 1000).toLocaleTimeString();
  }
  function fmtBytes(n) {
    if (n === null || n === undefined) return "";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"];
    let i = 0;
    while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
    return n.toFixed(i ? 1 : 0) + " " + u[i];
  }
  function fmtVal(v) {
    if (v === null || v === undefined) return "-";
    if (typeof v === "object") return JSON.stringify(v);
    return String(v);
  }
  function fmtMs(seconds) {
    if (seconds === null || seconds === undefined || !isFinite(seconds)) return "-";
    return (seconds * 1000).toFixed(seconds < 0.01 ? 1 : 0) + " ms";
  }
  function fmtPct(v) {
    return v === null || v === undefined || !isFinite(v) ? "-" : v.toFixed(0) + " %";
  }
  function fmtClock(c) {
    if (!c) return "-";
    const state = c.synchronized === true ? "synchronized" : c.synchronized === false ? "NOT synchronized" : "sync unknown";
    const off = c.offset_s === null || c.offset_s === undefined ? "" : ", offset " + c.offset_s + " s";
    return state + " (" + fmtVal(c.source) + off + ")";
  }
  function kv(dl, pairs) {
    dl.replaceChildren();
    for (const [k, v] of pairs) {
      dl.appendChild(el("dt", k));
      dl.appendChild(el("dd", fmtVal(v)));
    }
  }
  function table(tbl, headers, rows) {
    tbl.replaceChildren();
    const head = el("tr");
    for (const h of headers) head.appendChild(el("th", h));
    const thead = el("thead"); thead.appendChild(head); tbl.appendChild(thead);
    const tbody = el("tbody");
    for (const row of rows) {
      const tr = el("tr");
      for (const cell of row) {
        if (cell && typeof cell === "object" && "text" in cell) tr.appendChild(el("td", cell.text, cell.cls));
        else tr.appendChild(el("td", fmtVal(cell)));
      }
      tbody.appendChild(tr);
    }
    if (!rows.length) {
      const tr = el("tr"); const td = el("td", "none", "muted");
      td.setAttribute("colspan", String(headers.length)); tr.appendChild(td); tbody.appendChild(tr);
    }
    tbl.appendChild(tbody);
  }
  async function getJSON(url) {
    const r = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (r.status === 401) { window.location.assign("/login"); throw new Error("login required"); }
    if (!r.ok) throw new Error(url + ": HTTP " + r.status);
    return r.json();
  }
  async function post(url, body) {
    const r = await fetch(url, {
      method: "POST",
      credentials: "same-origin",
      headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
      body: JSON.stringify(body || {}),
    });
    let data = {};
    try { data = await r.json(); } catch (_e) { /* empty */ }
    return { status: r.status, data: data };
  }

  // -- map ----------------------------------------------------------------------------------
  function drawLayout(lay) {
    layout = lay;
    const w = lay.store.width_m, d = lay.store.depth_m;
    let x0 = 0, y0 = 0, x1 = w, y1 = d;
    const grow = (x, y) => { x0 = Math.min(x0, x); y0 = Math.min(y0, y); x1 = Math.max(x1, x); y1 = Math.max(y1, y); };
    for (const z of lay.zones) for (const p of z.polygon) grow(p[0], p[1]);
    for (const s of lay.sensors) grow(s.x, s.y);
    map.setAttribute("viewBox", [x0 - 1, y0 - 1, x1 - x0 + 2, y1 - y0 + 2].join(" "));
    map.setAttribute("preserveAspectRatio", "xMidYMid meet");
    map.dataset.width = String(w);
    map.dataset.depth = String(d);
    for (const name of ["floor", "coverage", "zones", "sensors", "dots"]) {
      layers[name] = svg("g", { id: "layer-" + name }, map);
    }
    svg("rect", { x: 0, y: 0, width: w, height: d, class: "floor" }, layers.floor);
    for (const z of lay.zones) {
      const g = svg("g", { class: "zone zone-" + String(z.kind).replace(/[^a-z]/g, ""), "data-zone": z.id }, layers.zones);
      svg("polygon", { points: z.polygon.map((p) => p[0] + "," + p[1]).join(" ") }, g);
      let cx = 0, cy = 0;
      for (const p of z.polygon) { cx += p[0]; cy += p[1]; }
      cx /= z.polygon.length; cy /= z.polygon.length;
      const label = svg("text", { x: cx, y: cy, class: "zone-label" }, g);
      const name = svg("tspan", { class: "zone-name" }, label);
      name.textContent = z.name || z.id;
      const occ = svg("tspan", { class: "zone-occ", x: cx, dy: 0.9 }, label);
      occ.textContent = "";
      zoneLabels.set(z.id, occ);
    }
    for (const s of lay.sensors) {
      const g = svg("g", { class: "sensor sensor-" + (s.kind === "gateway" ? "gateway" : "node"), "data-sensor": s.id }, layers.sensors);
      svg("rect", { x: s.x - 0.3, y: s.y - 0.3, width: 0.6, height: 0.6 }, g);
      const t = svg("text", { x: s.x + 0.45, y: s.y - 0.35, class: "sensor-label" }, g);
      t.textContent = s.id;
      const badge = svg("text", { x: s.x + 0.45, y: s.y + 0.55, class: "sensor-badge" }, g);
      badge.textContent = "";
      sensorBadges.set(s.id, badge);
    }
  }

  function updateDots(payload) {
    const seen = new Set();
    const showSigma = document.getElementById("show-sigma").checked;
    for (const dev of payload.devices) {
      const key = String(dev.subject);
      seen.add(key);
      let rec = dots.get(key);
      if (!rec) {
        const ring = svg("circle", { class: "sigma", r: 1 }, layers.dots);
        const dot = svg("circle", { class: "dot", r: 0.28 }, layers.dots);
        const title = svg("title", {}, dot);
        rec = { dot: dot, ring: ring, title: title };
        dots.set(key, rec);
        dot.setAttribute("data-subject", key);
      }
      rec.dot.setAttribute("cx", dev.x);
      rec.dot.setAttribute("cy", dev.y);
      rec.dot.setAttribute("data-x", dev.x);
      rec.dot.setAttribute("data-y", dev.y);
      rec.ring.setAttribute("cx", dev.x);
      rec.ring.setAttribute("cy", dev.y);
      rec.ring.setAttribute("r", Math.max(0.3, Number(dev.sigma_m) || 0));
      rec.ring.classList.toggle("hidden", !showSigma);
      rec.title.textContent = key + (dev.zone ? " in " + dev.zone : "") + " ±" + dev.sigma_m + " m";
    }
    for (const [key, rec] of dots) {
      if (!seen.has(key)) { rec.dot.remove(); rec.ring.remove(); dots.delete(key); }
    }
    updates += 1;
    map.dataset.updates = String(updates);
    map.dataset.dots = String(dots.size);
    document.getElementById("dot-count").textContent = dots.size + " devices";
  }

  async function toggleCoverage() {
    const on = document.getElementById("show-coverage").checked;
    layers.coverage.classList.toggle("hidden", !on);
    const legend = document.getElementById("coverage-legend");
    legend.hidden = !on;
    if (!on || coverageLoaded) return;
    coverageLoaded = true;
    const data = await getJSON("/api/coverage");
    const g = data.grid;
    if (!g) { legend.textContent = "coverage estimate not available"; return; }
    let max = 0;
    for (const row of g.rmse_m) for (const v of row) if (v !== null && v > max) max = v;
    const cap = Math.min(max, 10);
    for (let j = 0; j < g.ny; j++) {
      for (let i = 0; i < g.nx; i++) {
        const v = g.rmse_m[j][i];
        const q = v === null ? 1 : Math.min(1, v / (cap || 1));
        const hue = Math.round(120 * (1 - q)); // green = precise, red = poor
        svg("rect", {
          x: g.x0 + i * g.step_m - g.step_m / 2, y: g.y0 + j * g.step_m - g.step_m / 2,
          width: g.step_m, height: g.step_m, fill: "hsl(" + hue + ",70%,50%)", "fill-opacity": 0.35,
          "data-rmse": v === null ? "" : v,
        }, layers.coverage);
      }
    }
    legend.textContent = "CRLB position RMSE: green ≈ 0 m, red ≥ " + cap.toFixed(1) + " m";
  }

  // -- panels -------------------------------------------------------------------------------
  function fmtResidents(r) {
    if (!r) return "-";
    const parts = Object.keys(r).sort().map(function (k) { return k + " " + r[k]; });
    return parts.length ? parts.join(", ") : "0";
  }

  // Wi-Fi devices present (last minute, with its uncertainty; the mean of the last interval)
  function fmtWifi(w) {
    if (!w || w.devices === undefined) return "-";
    let out = w.devices + " \u00b1 " + w.sd + " (heard in " + fmtAge(w.window_s) + ")";
    if (w.interval) out += "; " + w.interval.devices + " on average over " + fmtAge(w.interval.interval_s);
    return out;
  }

  function renderStatus(s) {
    const now = s.ts || Date.now() / 1000;
    kv(document.getElementById("overview"), [
      ["gateway", s.gateway_id], ["store", s.store_id], ["version", s.version],
      ["uptime", fmtAge(s.uptime_s)], ["ready", s.ready],
      ["clock", fmtClock(s.clock)],
      ["disk free", s.disk && s.disk.total_bytes ? fmtBytes(s.disk.free_bytes) + " of " + fmtBytes(s.disk.total_bytes) : "-"],
      ["opt-outs", s.optouts],
      ["staff / fixtures set apart", fmtResidents((s.extra || {}).residents)],
      ["rotations linked", (s.extra || {}).linked_rotations],
      ["Wi-Fi devices", fmtWifi(s.wifi_devices)],
    ]);
    const u = s.uplink || {};
    kv(document.getElementById("uplink"), [
      ["state", u.state], ["broker", u.broker], ["last error", u.last_error], ["reconnects", u.reconnects],
      ["last publish", fmtTime(u.last_publish_ts)],
    ]);
    const o = s.outbox || {};
    kv(document.getElementById("outbox"), [
      ["backlog", o.backlog], ["oldest unsent", o.oldest_age_s === null ? "-" : fmtAge(o.oldest_age_s)],
      ["evictions", o.evictions], ["size", fmtBytes(o.bytes)],
      ["disk", o.disk_state ? { text: o.disk_state, cls: "state-" + String(o.disk_state).replace(/[^a-z]/g, "") } : "-"],
      ["cap", o.cap_bytes ? fmtBytes(o.cap_bytes) : "-"],
      ["held in RAM", o.refusing ? String(o.pending) + " (disk refuses: " + o.refusing + ")" : "-"],
    ]);
    // back-pressure in front of the pipeline thread, and its load: the box's headroom
    const p = s.pipeline || {};
    kv(document.getElementById("pipeline"), [
      ["queued", p.queued_batches === undefined ? "-" : p.queued_batches + " batches, " + p.queued_observations + " observations"],
      ["wait", fmtMs(p.wait_s) + " (longest " + fmtMs(p.max_wait_s) + ")"],
      ["thread busy", fmtPct(p.busy_pct) + " (CPU " + fmtPct(p.cpu_pct) + " of a core)"],
      ["longest job", fmtMs(p.longest_job_s)],
      ["dropped late", p.dropped_late], ["loop lag", fmtMs(p.loop_lag_s)],
      // load shedding (pipeline.shed_after_s): fix ticks skipped while batches waited too long
      ["fix ticks shed", ((s.extra || {}).dropped || {}).fix_tick_shed || 0],
    ]);
    const RATES = ["adverts_per_s", "frames_per_s"];
    table(document.getElementById("sources"), ["source", "state", "observations", "rate/s", "recoveries", "dropped", "last", "detail"],
      (s.sources || []).map((h) => {
        const d = h.detail || {};
        const rate = RATES.map((k) => d[k]).find((v) => v !== undefined);
        const detail = Object.entries(d).filter(([k]) => !RATES.includes(k)).map(([k, v]) => k + "=" + fmtVal(v)).join(" ");
        return [
          h.name, { text: h.state, cls: "state-" + String(h.state).replace(/[^a-z]/g, "") }, h.observations, rate,
          h.recoveries, Object.entries(h.dropped || {}).map(([k, v]) => k + ":" + v).join(" ") || "0",
          h.last_observation_ts ? fmtAge(now - h.last_observation_ts) + " ago" : "never", detail,
        ];
      }));
    table(document.getElementById("nodes"), ["node", "sensor", "state", "last seen"],
      (s.nodes || []).map((n) => [
        n.name, n.sensor, { text: n.state, cls: "state-" + String(n.state).replace(/[^a-z]/g, "") },
        n.last_seen ? fmtAge(now - n.last_seen) + " ago" : "never",
      ]));
    const heard = s.sensors_last_heard || {};
    const rows = [];
    for (const id of Object.keys(heard)) {
      const ts = heard[id];
      const age = ts === null ? null : now - ts;
      const cls = age === null || age > 30 ? "bad" : age > 5 ? "warn" : "ok";
      rows.push([id, { text: age === null ? "never" : fmtAge(age) + " ago", cls: "state-" + cls }]);
      const badge = sensorBadges.get(id);
      if (badge) {
        badge.textContent = age === null ? "silent" : fmtAge(age);
        badge.setAttribute("class", "sensor-badge badge-" + cls);
      }
    }
    table(document.getElementById("sensors"), ["sensor", "last heard"], rows);
    const occ = s.zone_occupancy || {};
    const wz = (s.wifi_devices && s.wifi_devices.by_zone) || {};
    const zrows = [];
    for (const z of (layout ? layout.zones : [])) {
      const n = occ[z.id] || 0;
      const t = zoneLabels.get(z.id);
      if (t) t.textContent = n + " here";
      zrows.push([z.name || z.id, z.kind, n, wz[z.id] === undefined ? "-" : wz[z.id]]);
    }
    table(document.getElementById("zones"), ["zone", "kind", "occupancy", "Wi-Fi devices"], zrows);
    table(document.getElementById("campaigns"), ["id", "name", "active"],
      (s.campaigns || []).map((c) => [c.id, c.name, c.active]));
    table(document.getElementById("actors"), ["id", "name", "kind", "state"],
      (s.actors || []).map((a) => [a.id, a.name, a.kind, a.state]));
    table(document.getElementById("events"), ["time", "type", "subject", "zone"],
      (s.recent_events || []).slice(0, 15).map((e) => [fmtTime(e.ts), e.type, e.subject, e.zone]));
    table(document.getElementById("activations"), ["time", "campaign", "actor", "subject", "result"],
      (s.recent_activations || []).slice(0, 15).map((a) => [fmtTime(a.ts), a.campaign_id, a.actor_id, a.subject, a.result]));
  }

  // -- actions ------------------------------------------------------------------------------
  const result = document.getElementById("action-result");
  function showResult(r) {
    result.textContent = r.data.message || r.data.error || ("HTTP " + r.status);
    result.className = r.status === 200 && r.data.ok ? "ok" : "error";
  }
  for (const b of document.querySelectorAll("button[data-action]")) {
    b.addEventListener("click", async () => {
      b.disabled = true;
      try { showResult(await post("/api/actions/" + b.dataset.action, {})); }
      catch (e) { result.textContent = String(e); result.className = "error"; }
      finally { b.disabled = false; }
    });
  }
  document.getElementById("optout-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const input = document.getElementById("optout-id");
    try {
      const r = await post("/api/actions/optout", { identifier: input.value });
      showResult(r);
      if (r.status === 200) input.value = "";
    } catch (e) { result.textContent = String(e); result.className = "error"; }
  });
  document.getElementById("logout").addEventListener("click", async () => {
    await post("/logout", {});
    window.location.assign("/login");
  });
  document.getElementById("show-coverage").addEventListener("change", () => { toggleCoverage().catch(console.error); });
  document.getElementById("show-sigma").addEventListener("change", () => {
    const on = document.getElementById("show-sigma").checked;
    for (const rec of dots.values()) rec.ring.classList.toggle("hidden", !on);
  });

  // -- start-up: layout + first dots, then the live stream ----------------------------------
  const conn = document.getElementById("conn");
  function stream() {
    const es = new EventSource("/api/stream");
    es.addEventListener("open", () => { conn.textContent = "live"; conn.className = "badge ok"; });
    es.addEventListener("devices", (ev) => updateDots(JSON.parse(ev.data)));
    es.addEventListener("status", (ev) => renderStatus(JSON.parse(ev.data)));
    es.addEventListener("logout", () => { es.close(); window.location.assign("/login"); });
    es.addEventListener("error", () => { conn.textContent = "reconnecting"; conn.className = "badge warn"; });
  }
  async function start() {
    const [lay, devs, status] = await Promise.all([getJSON("/api/layout"), getJSON("/api/devices"), getJSON("/api/status")]);
    drawLayout(lay);
    updateDots(devs);
    renderStatus(status);
    performance.mark("status-map-rendered");
    performance.measure("status-interactive", "status-app-start", "status-map-rendered");
    document.body.dataset.ready = "1";
    stream();
  }
  start().catch((e) => { conn.textContent = "error: " + e.message; conn.className = "badge bad"; });
})();
