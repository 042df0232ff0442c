// nextstate dashboard: fetches api/* and draws every chart as SVG in the browser (no libraries).
"use strict";
(() => {
  const SVG_NS = "http://www.w3.org/2000/svg";
  const PALETTE = ["#3b6fd8", "#1f9d55", "#d68a1f", "#8e44ad", "#d64545", "#17a2b8", "#6b7383", "#c0392b"];
  const REFRESH_MS = 5000;
  const colors = new Map();

  const colorOf = (version) => {
    if (version === "base") return "#8a93a3";
    if (!colors.has(version)) colors.set(version, PALETTE[colors.size % PALETTE.length]);
    return colors.get(version);
  };
  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
  const clock = (t) => new Date(t * 1000).toISOString().replace("T", " ").slice(0, 19) + "Z";
  const short = (t, span) => {
    const iso = new Date(t * 1000).toISOString();
    return span > 86400 ? iso.slice(5, 16).replace("T", " ") : iso.slice(11, 16);
  };

  function el(tag, attrs = {}, children = []) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") node.textContent = v;
      else if (k === "class") node.className = v;
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child);
    return node;
  }

  function svg(tag, attrs = {}, children = []) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [k, v] of Object.entries(attrs)) {
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, String(v));
    }
    for (const child of children) node.append(child);
    return node;
  }

  const badge = (value) => el("span", { class: `badge ${value}`, text: value });
  const empty = (text) => el("div", { class: "empty", text });

  function table(node, headers, rows) {
    node.replaceChildren(
      el("thead", {}, [el("tr", {}, headers.map((h) => el("th", { text: h })))]),
      el("tbody", {}, rows.map((cells) => el("tr", {}, cells.map((c) =>
        c instanceof Node ? el("td", {}, [c]) : el("td", { class: "text", text: c ?? "–", title: c ?? "" }))))),
    );
  }

  // A page opened as http://user:token@host/dashboard/ has the credentials in its base URL, and fetch()
  // refuses such a URL; the browser already holds them for this origin and sends them on its own.
  function apiURL(path) {
    const url = new URL(path, document.baseURI);
    url.username = "";
    url.password = "";
    return url;
  }

  async function api(path) {
    const response = await fetch(apiURL(path), { credentials: "same-origin" });
    if (!response.ok) throw new Error(`${path}: HTTP ${response.status}`);
    return response.json();
  }

  // -- reward rate per version over time --------------------------------------------------------
  function drawRewards(data) {
    const host = document.getElementById("rewards");
    const versions = Object.keys(data.series);
    if (!versions.length) { host.replaceChildren(empty("No labeled samples with a reward yet.")); return; }
    const W = 1300, H = 300, L = 44, R = 16, T = 10, B = 26;
    const points = versions.flatMap((v) => data.series[v]);
    const t0 = Math.min(...points.map((p) => p.t));
    const t1 = Math.max(...points.map((p) => p.t)) + data.width;
    const x = (t) => L + ((t + data.width / 2 - t0) / Math.max(t1 - t0, 1)) * (W - L - R);
    const y = (r) => T + (1 - r) * (H - T - B);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "reward rate per version" });
    for (const r of [0, 0.25, 0.5, 0.75, 1]) {
      chart.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: y(r), y2: y(r) }));
      chart.append(svg("text", { x: L - 6, y: y(r) + 4, "text-anchor": "end", text: `${r * 100}%` }));
    }
    const ticks = 6;
    for (let i = 0; i <= ticks; i++) {
      const t = t0 + ((t1 - t0) * i) / ticks;
      chart.append(svg("text", { x: L + ((t - t0) / Math.max(t1 - t0, 1)) * (W - L - R), y: H - 8,
        "text-anchor": "middle", text: short(t, t1 - t0) }));
    }
    for (const version of versions) {
      const series = data.series[version];
      const d = series.map((p, i) => `${i ? "L" : "M"}${x(p.t).toFixed(1)},${y(p.rate).toFixed(1)}`).join(" ");
      chart.append(svg("path", { class: "series", d, stroke: colorOf(version), "data-version": version }));
      for (const p of series) {
        chart.append(svg("circle", {
          class: "point", cx: x(p.t), cy: y(p.rate), r: 2 + Math.min(4, Math.sqrt(p.n)), fill: colorOf(version),
          "data-version": version, "data-rate": p.rate, "data-n": p.n,
        }, [svg("title", { text: `${version} ${clock(p.t)}: ${pct(p.rate)} of ${p.n} (${p.prefer} prefer, ${p.avoid} avoid)` })]));
      }
    }
    const legend = el("div", { class: "legend" }, versions.map((v) => el("span", {}, [
      el("i", { style: `background:${colorOf(v)}` }), `${v} (${data.series[v].reduce((s, p) => s + p.n, 0)})`])));
    host.replaceChildren(chart, legend);
  }

  // -- the running canary ---------------------------------------------------------------------
  function drawCanary(data) {
    const host = document.getElementById("canary");
    const canary = data.canary;
    if (!canary) { host.replaceChildren(empty("No canary running.")); return; }
    host.dataset.version = canary.version;
    const arms = ["stable", "canary"].map((name) => ({ name, ...canary.arms[name] }));
    const W = 640, H = 90, L = 90, R = 24;
    const x = (r) => L + r * (W - L - R);
    const plot = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "canary arms" });
    for (const r of [0, 0.5, 1]) {
      plot.append(svg("line", { class: "axis", x1: x(r), x2: x(r), y1: 4, y2: H - 18 }));
      plot.append(svg("text", { x: x(r), y: H - 4, "text-anchor": "middle", text: `${r * 100}%` }));
    }
    arms.forEach((arm, i) => {
      const cy = 20 + i * 30;
      plot.append(svg("text", { x: 4, y: cy + 4, text: `${arm.name} ${arm.version}` }));
      if (arm.rate === null) return;
      plot.append(svg("line", { x1: x(arm.low), x2: x(arm.high), y1: cy, y2: cy, stroke: colorOf(arm.version),
        "stroke-width": 6, "stroke-opacity": 0.35, class: "interval", "data-arm": arm.name }));
      plot.append(svg("circle", { cx: x(arm.rate), cy, r: 5, fill: colorOf(arm.version), class: "arm",
        "data-arm": arm.name, "data-rate": arm.rate, "data-n": arm.n }));
    });
    const pts = (x) => `${x >= 0 ? "+" : ""}${(100 * x).toFixed(1)}`;
    const [lo, hi] = canary.interval;
    const facts = el("p", { text:
      `${canary.version} at ${pct(canary.fraction)} of traffic (step ${canary.step}), since ${clock(canary.started_at)}; ` +
      `difference canary − stable: ${canary.difference === null ? "–" : pts(canary.difference) + " pts"}, ` +
      `anytime-valid ${pct(canary.confidence)} interval [${pts(lo)}, ${pts(hi)}] pts ` +
      `(promote needs > ${pts(-canary.margin)}, roll back < 0)` });
    facts.id = "canary-facts";
    facts.dataset.low = lo;
    facts.dataset.high = hi;
    const grid = el("table", { class: "grid" });
    table(grid, ["arm", "version", "prefer", "avoid", "observation", "rate", "95% interval"], arms.map((a) => [
      a.name, a.version, String(a.prefer), String(a.avoid), String(a.observation), pct(a.rate),
      a.low === null ? "–" : `${pct(a.low)} – ${pct(a.high)}`]));
    host.replaceChildren(facts, plot, grid);
  }

  // -- queues and streams ----------------------------------------------------------------------
  function drawQueues(data) {
    const kinds = ["queued", "started", "failed"];
    const fills = { queued: "#3b6fd8", started: "#d68a1f", failed: "#d64545" };
    const W = 640, rowH = 22, L = 110, R = 40;
    const H = data.queues.length * kinds.length * rowH + 10;
    const max = Math.max(1, ...data.queues.flatMap((q) => kinds.map((k) => q[k])));
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "queue depths" });
    let row = 0;
    for (const q of data.queues) {
      for (const kind of kinds) {
        const yTop = 5 + row * rowH, width = (q[kind] / max) * (W - L - R);
        chart.append(svg("text", { x: 4, y: yTop + 14, text: `${q.queue} ${kind}` }));
        chart.append(svg("rect", { class: "bar", x: L, y: yTop + 3, width: Math.max(width, 1), height: rowH - 8,
          fill: fills[kind], "data-queue": q.queue, "data-kind": kind, "data-value": q[kind] }));
        chart.append(svg("text", { x: L + Math.max(width, 1) + 4, y: yTop + 14, text: String(q[kind]) }));
        row++;
      }
    }
    document.getElementById("queues").replaceChildren(chart);
    table(document.getElementById("streams"), ["stream", "length", "consumer groups (lag / pending)"],
      data.streams.map((s) => [s.stream, String(s.length),
        s.groups.map((g) => `${g.group}: ${g.lag ?? "?"} / ${g.pending}`).join(", ") || "–"]));
  }

  // -- registry timeline -----------------------------------------------------------------------
  function drawTimeline(data) {
    const host = document.getElementById("timeline-chart");
    // decisions in order, evenly spaced (many happen within seconds of each other); the last 40
    const shown = data.events.slice(-40);
    if (!shown.length) host.replaceChildren(empty("No registry events yet."));
    else {
      const W = 1300, H = 96, L = 60, R = 60, step = shown.length > 1 ? (W - L - R) / (shown.length - 1) : 0;
      const x = (i) => (shown.length > 1 ? L + i * step : W / 2);
      const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "registry timeline" });
      chart.append(svg("line", { class: "axis", x1: L, x2: W - R, y1: 44, y2: 44 }));
      const bad = /rolled_back|rejected|fail/, good = /promoted|pass/;
      const passed = (e) => e.evidence?.gate?.passed ?? e.evidence?.passed;
      shown.forEach((e, i) => {
        const fill = bad.test(e.kind) || passed(e) === false ? "#d64545"
          : good.test(e.kind) || passed(e) === true ? "#1f9d55" : "#3b6fd8";
        chart.append(svg("circle", { class: "event", cx: x(i), cy: 44, r: 6, fill,
          "data-kind": e.kind, "data-version": e.version ?? "" },
          [svg("title", { text: `${clock(e.created_at)} ${e.kind} ${e.version ?? ""} by ${e.actor}: ${e.reason}` })]));
        const above = i % 2 === 0;
        chart.append(svg("text", { x: x(i), y: above ? 22 : 70, "text-anchor": "middle", text: e.version ?? "" }));
        chart.append(svg("text", { x: x(i), y: above ? 34 : 82, "text-anchor": "middle", text: e.kind.replaceAll("_", " ") }));
      });
      chart.append(svg("text", { x: L, y: H - 2, "text-anchor": "middle", text: clock(shown[0].created_at) }));
      chart.append(svg("text", { x: W - R, y: H - 2, "text-anchor": "middle", text: clock(shown[shown.length - 1].created_at) }));
      host.replaceChildren(chart);
    }
    const aliasOf = {};
    for (const [alias, version] of Object.entries(data.aliases)) (aliasOf[version] ||= []).push(alias);
    table(document.getElementById("versions"), ["version", "state", "aliases", "parent", "gate", "created"],
      data.versions.map((v) => [v.version, badge(v.state), (aliasOf[v.version] || []).join(", "), v.parent,
        v.gate ? (v.gate.passed ? badge("pass") : el("span", {}, [badge("fail"), ` ${v.gate.reasons.join("; ")}`])) : "–",
        clock(v.created_at)]));
    table(document.getElementById("events"), ["time", "decision", "version", "actor", "reason"],
      data.events.slice().reverse().slice(0, 30).map((e) => [clock(e.created_at), e.kind, e.version, e.actor, e.reason]));
  }

  // -- recent samples --------------------------------------------------------------------------
  function drawSamples(data) {
    table(document.getElementById("samples"),
      ["time", "version", "label", "reward", "agreement", "source", "hint", "user asked", "answer"],
      data.samples.map((s) => [clock(s.created_at), s.version, badge(s.cls), String(s.reward), pct(s.agreement),
        s.source, s.hint ? el("span", { class: "hint", text: s.hint }) : "–", s.prompt, s.answer]));
  }

  function drawRouting(summary) {
    const r = summary.routing || {};
    const parts = [["base", r.base_model], ["stable", r.stable || "base model"],
      ["canary", r.canary ? `${r.canary} (${pct(r.canary_fraction)})` : "none"]];
    document.getElementById("routing").replaceChildren(...parts.map(([k, v]) => el("span", {}, [el("b", { text: `${k}: ` }), v ?? "–"])));
  }

  function drawScopes(summary) {
    table(document.getElementById("scopes"), ["scope", "stable", "canary", "versions"],
      (summary.scopes || []).map((s) => [s.scope, s.stable || (s.scope === "global" ? "base model" : "global stable"),
        s.canary ? `${s.canary} (${pct(s.canary_fraction)})` : "none", String(s.versions)]));
  }

  let refreshes = 0;
  async function refresh() {
    const status = document.getElementById("status");
    try {
      const [summary, rewards, canary, queues, timeline, samples] = await Promise.all(
        ["api/summary", "api/rewards", "api/canary", "api/queues", "api/timeline", "api/samples"].map(api));
      drawRouting(summary);
      drawScopes(summary);
      drawRewards(rewards);
      drawCanary(canary);
      drawQueues(queues);
      drawTimeline(timeline);
      drawSamples(samples);
      refreshes += 1;
      document.body.dataset.refreshes = String(refreshes);
      status.className = "status";
      status.textContent = `updated ${clock(summary.now)}`;
    } catch (err) {
      status.className = "status error";
      status.textContent = `update failed: ${err.message}`;
      console.error("dashboard refresh failed", err);
    }
  }

  refresh();
  setInterval(refresh, REFRESH_MS);
})();
