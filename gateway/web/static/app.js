// fieldgate local UI: live twin values (SSE), setpoints without a page reload, history plots as inline SVG,
// confirmations. The pages work without it; this only makes them live.
"use strict";

(function () {
  const csrf = () => (document.querySelector('meta[name="csrf-token"]') || {}).content || "";

  // Forms that delete or revoke ask first.
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  const fmt = (value) => {
    if (value === null || value === undefined) return "–";
    if (typeof value === "number" && !Number.isInteger(value)) return String(Number(value.toPrecision(6)));
    return String(value);
  };
  const fmtTime = (ts) => {
    if (!ts) return "–";
    const d = new Date(ts * 1000);
    const pad = (n) => String(n).padStart(2, "0");
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  };

  const table = document.getElementById("twin");
  if (!table) return;
  const device = table.dataset.device;

  function setCell(row, selector, text) {
    const cell = row.querySelector(selector);
    if (cell && cell.textContent !== text) {
      cell.textContent = text;
      cell.classList.remove("changed");
      void cell.offsetWidth; // restart the highlight animation
      cell.classList.add("changed");
    }
  }

  function applySnapshot(snapshot) {
    for (const [name, prop] of Object.entries(snapshot.twin)) {
      const row = table.querySelector(`tr[data-prop="${CSS.escape(name)}"]`);
      if (!row) continue;
      setCell(row, ".reported", fmt(prop.reported));
      setCell(row, ".desired", fmt(prop.desired));
      setCell(row, ".reported-at", fmtTime(prop.reported_at));
      const quality = row.querySelector(".quality");
      if (quality) quality.textContent = prop.quality + (prop.error ? ` ${prop.error}` : "");
    }
    const state = document.querySelector("#device-state .badge");
    if (state && state.textContent !== snapshot.state) {
      state.textContent = snapshot.state;
      state.className = `badge ${snapshot.state}`;
      state.dataset.status = snapshot.state;
    }
    const reason = document.getElementById("state-reason");
    if (reason) reason.textContent = snapshot.reason || "";
  }

  const live = document.getElementById("live");
  const source = new EventSource(`/devices/${device}/events`);
  const onMessage = (event) => applySnapshot(JSON.parse(event.data));
  source.addEventListener("twin", onMessage);
  source.addEventListener("state", onMessage);
  source.onopen = () => live && live.classList.add("on");
  source.onerror = () => live && live.classList.remove("on");
  window.addEventListener("pagehide", () => source.close());

  // Setpoints: post the form with fetch and show the server's error next to it.
  for (const form of document.querySelectorAll("form.set-desired")) {
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const error = form.querySelector(".error");
      error.textContent = "";
      try {
        const response = await fetch(form.action, {
          method: "POST", body: new URLSearchParams(new FormData(form)),
          headers: { "Accept": "application/json", "X-CSRF-Token": csrf() }, credentials: "same-origin",
        });
        const body = await response.json().catch(() => ({ error: `HTTP ${response.status}` }));
        if (!response.ok || !body.ok) {
          error.textContent = body.error || body.detail || `HTTP ${response.status}`;
          return;
        }
        const row = table.querySelector(`tr[data-prop="${CSS.escape(body.property)}"]`);
        if (row) setCell(row, ".desired", fmt(body.desired));
      } catch (exc) {
        error.textContent = String(exc);
      }
    });
  }

  // History plot: min-max band and mean line over buckets, drawn as SVG.
  const panel = document.getElementById("plot");
  const area = document.getElementById("plot-area");
  let plotProp = null;
  let plotWindow = "15m";

  const svgEl = (tag, attrs) => {
    const el = document.createElementNS("http://www.w3.org/2000/svg", tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    return el;
  };

  function draw(data) {
    area.textContent = "";
    const points = data.points;
    if (!points.length) {
      area.textContent = "No numeric history in this window yet.";
      return;
    }
    const W = 900, H = 260, L = 56, R = 10, T = 10, B = 24;
    let lo = Math.min(...points.map((p) => p[1])), hi = Math.max(...points.map((p) => p[2]));
    if (lo === hi) { lo -= 1; hi += 1; }
    const x = (t) => L + ((t - data.since) / (data.until - data.since)) * (W - L - R);
    const y = (v) => T + (1 - (v - lo) / (hi - lo)) * (H - T - B);
    const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img",
      "aria-label": `history of ${data.property}` });
    svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B }));
    svg.appendChild(svgEl("line", { class: "axis", x1: L, y1: T, x2: L, y2: H - B }));
    const band = points.map((p) => `${x(p[0])},${y(p[2])}`)
      .concat(points.slice().reverse().map((p) => `${x(p[0])},${y(p[1])}`));
    svg.appendChild(svgEl("polygon", { class: "band", points: band.join(" ") }));
    svg.appendChild(svgEl("polyline", { class: "mean", points: points.map((p) => `${x(p[0])},${y(p[3])}`).join(" ") }));
    if (points.length < 40) {  // a short history: mark the buckets so a single one shows too
      for (const p of points) svg.appendChild(svgEl("circle", { class: "dot", cx: x(p[0]), cy: y(p[3]), r: 3 }));
    }
    const label = (text, attrs) => { const t = svgEl("text", attrs); t.textContent = text; svg.appendChild(t); };
    label(`${fmt(hi)} ${data.unit}`, { x: 4, y: T + 10 });
    label(`${fmt(lo)} ${data.unit}`, { x: 4, y: H - B });
    label(fmtTime(data.since).slice(11), { x: L, y: H - 6 });
    label(fmtTime(data.until).slice(11), { x: W - R - 52, y: H - 6 });
    area.appendChild(svg);
    area.dataset.points = String(points.length);
  }

  async function loadPlot() {
    panel.hidden = false;
    document.getElementById("plot-prop").textContent = plotProp;
    for (const b of panel.querySelectorAll(".plot-window")) b.classList.toggle("active", b.dataset.window === plotWindow);
    const response = await fetch(`/devices/${device}/plot/${encodeURIComponent(plotProp)}?window=${plotWindow}`,
      { headers: { "Accept": "application/json" }, credentials: "same-origin" });
    if (!response.ok) { area.textContent = `HTTP ${response.status}`; return; }
    draw(await response.json());
  }

  for (const button of document.querySelectorAll(".plot-open")) {
    button.addEventListener("click", () => { plotProp = button.dataset.prop; loadPlot(); });
  }
  for (const button of document.querySelectorAll(".plot-window")) {
    button.addEventListener("click", () => { plotWindow = button.dataset.window; if (plotProp) loadPlot(); });
  }
})();
