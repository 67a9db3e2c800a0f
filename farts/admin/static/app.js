// The farts-edge status page: one event stream from this admin listener (/api/events),
// read with fetch so the bearer token can go in a header; everything drawn with DOM and
// SVG built here (no library, no inline script or style: the page's CSP forbids them).
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const WINDOW_S = 15 * 60;
  const CHARTS = [
    ["rps", "requests/s"], ["p99_ms", "p99 latency (ms)"], ["p50_ms", "p50 latency (ms)"],
    ["slow_per_min", "slow requests / min"], ["connections", "connections"],
    ["deliveries_ps", "pub/sub deliveries/s"], ["dns_qps", "DNS queries/s"], ["db_ops_ps", "DB ops/s"],
  ];
  const $ = (id) => document.getElementById(id);
  let token = sessionStorage.getItem("farts-admin-token") || "";
  let fields = [];
  const history = {};   // node -> [point]
  let order = [];       // node ids, for stable colours

  const m = /[#&]token=([^&]+)/.exec(location.hash);
  if (m) { token = decodeURIComponent(m[1]); sessionStorage.setItem("farts-admin-token", token); history_clear_hash(); }
  function history_clear_hash() { window.history.replaceState(null, "", location.pathname); }

  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }
  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
    return e;
  }
  function fmt(v, digits) {
    if (v === null || v === undefined || Number.isNaN(v)) return "–";
    if (typeof v !== "number") return String(v);
    const d = digits === undefined ? (Math.abs(v) >= 100 ? 0 : Math.abs(v) >= 10 ? 1 : 2) : digits;
    return v.toFixed(d);
  }
  function bytes(v) {
    if (v === null || v === undefined) return "–";
    const u = ["B", "KiB", "MiB", "GiB", "TiB"]; let i = 0;
    while (v >= 1024 && i < u.length - 1) { v /= 1024; i++; }
    return v.toFixed(i ? 1 : 0) + " " + u[i];
  }
  function setConn(up, text) {
    const c = $("conn");
    c.className = "conn " + (up ? "up" : "down");
    c.textContent = text;
  }

  // ---- the stream ----------------------------------------------------------------------
  async function connect() {
    const headers = token ? { Authorization: "Bearer " + token } : {};
    let resp;
    try {
      resp = await fetch("/api/events", { headers, cache: "no-store" });
    } catch (e) {
      setConn(false, "disconnected, retrying");
      return retry();
    }
    if (resp.status === 401 || resp.status === 403) {
      setConn(false, "token needed");
      $("auth").hidden = false;
      return;
    }
    if (!resp.ok || !resp.body) { setConn(false, "error " + resp.status + ", retrying"); return retry(); }
    $("auth").hidden = true;
    setConn(true, "live");
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buf = "";
    try {
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buf += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buf.indexOf("\n\n")) >= 0) {
          const block = buf.slice(0, cut); buf = buf.slice(cut + 2);
          let name = "message", data = "";
          for (const line of block.split("\n")) {
            if (line.startsWith("event: ")) name = line.slice(7);
            else if (line.startsWith("data: ")) data += line.slice(6);
          }
          if (data) handle(name, JSON.parse(data));
        }
      }
    } catch (e) { /* the stream broke: reconnect below */ }
    setConn(false, "disconnected, retrying");
    retry();
  }
  function retry() { setTimeout(connect, 1000); }

  $("auth").addEventListener("submit", (ev) => {
    ev.preventDefault();
    token = $("token").value.trim();
    sessionStorage.setItem("farts-admin-token", token);
    connect();
  });

  function handle(name, data) {
    if (name === "hello") {
      fields = data.fields;
      for (const node in data.history) history[node] = data.history[node].map(toObj);
    }
    if (name === "hello" || name === "tick") {
      for (const node in data.samples) addPoint(node, data.samples[node]);
      render(data);
    }
  }
  function toObj(p) { const o = {}; fields.forEach((f, i) => { o[f] = p[i]; }); return o; }
  function addPoint(node, s) {
    const h = history[node] || (history[node] = []);
    if (h.length && h[h.length - 1].t >= s.t) return;
    const conns = Object.values(s.connections || {}).reduce((a, b) => a + b, 0);
    h.push({ t: s.t, rps: s.rps, p50_ms: s.p50_ms, p99_ms: s.p99_ms, slow_per_min: s.slow_per_min,
             connections: conns, deliveries_ps: (s.pubsub || {}).deliveries_ps,
             dns_qps: (s.dns || {}).qps, db_ops_ps: (s.db || {}).ops_ps, cdn_hit_ratio: (s.cdn || {}).hit_ratio });
    const cutoff = s.t - WINDOW_S;
    while (h.length && h[0].t < cutoff) h.shift();
  }

  // ---- drawing -------------------------------------------------------------------------
  function render(data) {
    $("asked").textContent = "as node " + data.node + " sees it";
    $("updated").textContent = "updated " + new Date(data.t * 1000).toLocaleTimeString();
    for (const r of data.members) if (!order.includes(r.id)) order.push(r.id);
    for (const n in data.samples) if (!order.includes(n)) order.push(n);
    members(data.members);
    map(data.members);
    cards(data);
    charts();
    routes(data.samples);
    slow(data);
  }

  function members(rows) {
    const body = $("members").tBodies[0];
    body.replaceChildren();
    for (const r of rows) {
      const tr = el("tr", { "data-node": r.id, "data-state": r.state });
      tr.append(el("td", {}, r.id + (r.self ? " *" : "")), el("td", {}, r.region || "–"),
                el("td", { class: r.state }, r.state),
                el("td", { class: "num" }, r.rtt_ms === null ? "–" : fmt(r.rtt_ms) + " ms"),
                el("td", { class: "num" }, r.incarnation),
                el("td", {}, r.link === null ? "–" : r.link ? "up" : "down"),
                el("td", {}, r.version || "–"), el("td", { class: "num" }, fmt(r.load)),
                el("td", {}, r.self || r.last_heard_s === null ? "–" : fmt(r.last_heard_s, 1) + " s ago"));
      body.append(tr);
    }
  }

  let mapBase = null;
  function map(rows) {
    const m = $("map");
    if (!mapBase) {
      mapBase = svg("g");
      for (let lon = -150; lon <= 150; lon += 30) mapBase.append(svg("path", { class: "grat", d: `M${lon + 180},0V180` }));
      for (let lat = -60; lat <= 60; lat += 30) mapBase.append(svg("path", { class: "grat", d: `M0,${90 - lat}H360` }));
      if (window.FARTS_LAND) mapBase.append(svg("path", { class: "land", d: window.FARTS_LAND }));
      m.append(mapBase);
    }
    const old = m.querySelector("g.nodes");
    if (old) old.remove();
    const g = svg("g", { class: "nodes" });
    for (const r of rows) {
      if (r.lat === null || r.lat === undefined) continue;
      const x = r.lon + 180, y = 90 - r.lat;
      const c = svg("circle", { cx: x, cy: y, r: 2.6, class: "node " + r.state, "data-node": r.id });
      const title = svg("title");
      title.textContent = `${r.id} (${r.region}) ${r.state}`;
      c.append(title);
      const label = svg("text", { x: x + 3.5, y: y + 1.4, class: "label" });
      label.textContent = r.id;
      g.append(c, label);
    }
    m.append(g);
  }

  function cards(data) {
    const box = $("nodes");
    box.replaceChildren();
    const states = {};
    for (const r of data.members) states[r.id] = r.state;
    for (const node of order) {
      const s = data.samples[node];
      if (!s) continue;
      const c = el("div", { class: "card", "data-node": node, "data-rps": s.rps });
      const h = el("h3", {}, `${node} · ${s.region}`);
      const st = el("span", { class: states[node] || "" }, states[node] ? " " + states[node] : "");
      h.append(st);
      const dl = el("dl");
      const conns = Object.entries(s.connections || {}).map(([k, v]) => `${k} ${v}`).join(", ") || "–";
      const rows = [["requests/s", fmt(s.rps)], ["p50 / p99", `${fmt(s.p50_ms)} / ${fmt(s.p99_ms)} ms`],
                    ["slow / min", fmt(s.slow_per_min, 0)], ["connections", conns]];
      if (s.pubsub) rows.push(["pub/sub", `${fmt(s.pubsub.channels, 0)} ch, ${fmt(s.pubsub.subscribers, 0)} subs, ${fmt(s.pubsub.deliveries_ps)}/s`]);
      if (s.cdn) rows.push(["CDN hit ratio", s.cdn.hit_ratio === null ? (s.cdn.hit_ratio_all === null ? "–" : fmt(100 * s.cdn.hit_ratio_all, 1) + " % (all)") : fmt(100 * s.cdn.hit_ratio, 1) + " %"],
                           ["CDN disk", bytes(s.cdn.disk_bytes)]);
      if (s.dns) {
        const per = Object.entries(s.dns.answers_ps || {}).map(([k, v]) => `${k} ${fmt(v)}`).join(", ");
        rows.push(["DNS queries/s", fmt(s.dns.qps)]);
        if (per) rows.push(["DNS answers/s", per]);
      }
      if (s.db) rows.push(["DB ops/s", fmt(s.db.ops_ps)], ["DB store", bytes(s.db.store_bytes)]);
      if (s.db && s.db.lag_ms) for (const [origin, ms] of Object.entries(s.db.lag_ms))
        rows.push(["replication lag from " + origin, fmt(ms) + " ms"]);
      if (s.certs) {
        const certs = Object.entries(s.certs).map(([k, d]) => `${k} ${fmt(d, 0)} d`).join(", ");
        rows.push(["certificates", certs || "–"]);
      }
      const age = data.t - s.t;
      if (age > 3 * (s.interval || 1)) rows.push(["last sample", fmt(age, 0) + " s ago"]);
      for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", { "data-key": k }, v));
      c.append(h, dl);
      box.append(c);
    }
  }

  function charts() {
    const box = $("charts");
    const legend = $("legend");
    legend.replaceChildren(...order.map((n, i) => el("span", { class: "s" + (i % 6) }, "● " + n)));
    box.replaceChildren();
    const now = Date.now() / 1000;
    for (const [key, title] of CHARTS) {
      const W = 300, H = 90;
      let max = 0;
      for (const n of order) for (const p of history[n] || []) if (typeof p[key] === "number" && p[key] > max) max = p[key];
      if (max === 0) max = 1;
      const s = svg("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", "data-chart": key });
      order.forEach((n, i) => {
        const pts = [];
        for (const p of history[n] || []) {
          if (typeof p[key] !== "number") continue;
          const x = W - ((now - p.t) / WINDOW_S) * W;
          if (x < 0) continue;
          pts.push(`${x.toFixed(1)},${(H - 4 - (p[key] / max) * (H - 14)).toFixed(1)}`);
        }
        if (pts.length) s.append(svg("polyline", { points: pts.join(" "), class: "s" + (i % 6) }));
      });
      const top = svg("text", { x: 3, y: 10, class: "axis" });
      top.textContent = fmt(max);
      s.append(top);
      const c = el("div", { class: "chart" });
      c.append(el("h3", {}, title), s);
      box.append(c);
    }
  }

  function routes(samples) {
    const body = $("routes").tBodies[0];
    body.replaceChildren();
    for (const node of order) {
      const s = samples[node];
      if (!s) continue;
      for (const [route, cls, rps] of s.routes || []) {
        const tr = el("tr");
        tr.append(el("td", {}, node), el("td", {}, route), el("td", {}, cls), el("td", { class: "num" }, fmt(rps)));
        body.append(tr);
      }
    }
  }

  function slow(data) {
    // Every node's newest slow requests (each sample carries its node's last few; this
    // node's own list is longer), newest first.
    const seen = new Set(), rows = [];
    for (const r of data.slow || []) rows.push(Object.assign({ node: data.node }, r));
    for (const node in data.samples) {
      if (node === data.node) continue;
      for (const r of data.samples[node].slow_recent || []) rows.push(Object.assign({ node }, r));
    }
    rows.sort((a, b) => b.ts - a.ts);
    $("slow-note").textContent = "(every node, newest first; over limits.slow_request_seconds; – : not measured for that request)";
    const body = $("slow").tBodies[0];
    body.replaceChildren();
    for (const r of rows.slice(0, 20)) {
      const key = `${r.node} ${r.ts} ${r.target}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const tr = el("tr");
      tr.append(el("td", {}, new Date(r.ts * 1000).toLocaleTimeString()), el("td", {}, r.node), el("td", {}, r.listener),
                el("td", {}, r.route), el("td", {}, r.tenant), el("td", { title: r.target }, `${r.method} ${r.target}`),
                el("td", {}, r.status));
      for (const k of ["total_ms", "queue_ms", "upstream_connect_ms", "upstream_first_byte_ms", "send_ms"]) {
        tr.append(el("td", { class: "num" }, r[k] === null ? "–" : fmt(r[k]) + " ms"));
      }
      body.append(tr);
    }
  }

  connect();
})();
