// fieldgate plots, on both UIs: uPlot (vendored, /static/uplot.min.js) draws what a JSON endpoint gives, over the
// server-drawn SVG that pages show without script. Time axis, grid, a tooltip with the values under the cursor,
// drag to zoom (double-click resets), the x axis fitted to the span that has data, a window selector, refreshed
// while the page is visible.
//
// <figure class="plot-box" data-plot-src=URL data-plot-format="buckets|series" data-plot-series="name:label …"
//         data-plot-kind="percent|bytes|bytes_per_s|per_s|count|<unit>" data-plot-title="…" [data-plot-ymax=100]>
//   …SVG fallback…</figure>
// Figures inside an element marked data-plot-group share its window (data-plot-window) and its selector: links or
// buttons with data-window inside the group, else buttons made from data-plot-windows ("15m 1h 24h 7d").
// `buckets`: {since, until, points: [[t, min, max, mean], …]}; `series`: {times: [t…], series: {name: [v…]}}.
"use strict";

(function () {
  if (typeof window.uPlot !== "function") return;  // no library: the SVG stays
  const COLORS = ["#1f6feb", "#d9480f", "#2b8a3e", "#862e9c"];
  const MUTED = "#5b6470";
  const GRID = "#e5e8ee";
  const REFRESH = { "15m": 10, "1h": 30, "24h": 120, "7d": 300 };  // seconds between refreshes per window

  function fmt(value, kind) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    const num = (v) => (Math.abs(v) >= 100 || Number.isInteger(v) ? v.toFixed(0) : String(Number(v.toPrecision(3))));
    if (kind === "percent") return `${value >= 10 || value === 0 ? value.toFixed(0) : value.toFixed(1)} %`;
    if (kind === "bytes" || kind === "bytes_per_s") {
      let size = value;
      for (const prefix of ["B", "KiB", "MiB", "GiB", "TiB"]) {
        if (Math.abs(size) < 1024 || prefix === "TiB") {
          const digits = prefix === "B" || Math.abs(size) >= 100 ? 0 : 1;
          return `${size.toFixed(digits)} ${prefix}${kind === "bytes_per_s" ? "/s" : ""}`;
        }
        size /= 1024;
      }
    }
    if (kind === "per_s") return `${num(value)}/s`;
    if (kind === "count" || !kind) return num(value);
    return kind === "°" ? `${num(value)}°` : `${num(value)} ${kind}`;
  }

  const pad = (n) => String(n).padStart(2, "0");
  function fmtTime(ts, withDate) {
    const d = new Date(ts * 1000);
    const time = `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
    return withDate ? `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${time}` : time;
  }

  // The JSON of a figure as uPlot's columns: [times, series…], with their labels.
  function columns(figure, body) {
    if (figure.dataset.plotFormat === "buckets") {
      const points = body.points || [];
      return { labels: ["mean", "max", "min"], band: true,
        data: [points.map((p) => p[0]), points.map((p) => p[3]), points.map((p) => p[2]), points.map((p) => p[1])] };
    }
    const wanted = (figure.dataset.plotSeries || "").split(" ").filter(Boolean).map((item) => item.split(":"));
    return { labels: wanted.map(([name, label]) => label || name), band: false,
      data: [body.times || [], ...wanted.map(([name]) => ((body.series || {})[name] || []))] };
  }

  function hasData(data) {
    return data.slice(1).some((values) => values.some((v) => v !== null && v !== undefined));
  }

  function options(figure, cols, width) {
    const kind = figure.dataset.plotKind || "count";
    const yMax = figure.dataset.plotYmax ? Number(figure.dataset.plotYmax) : null;
    const fromZero = ["percent", "bytes", "bytes_per_s", "per_s"].includes(kind);
    const series = [{ value: (u, ts) => (ts === null ? "–" : fmtTime(ts, true)) }];
    cols.labels.forEach((label, i) => {
      const color = COLORS[cols.band ? 0 : i % COLORS.length];
      series.push({ label, stroke: color, width: cols.band && i > 0 ? 0.5 : 1.5, spanGaps: false,
        value: (u, v) => fmt(v, kind) });
    });
    const tip = document.createElement("div");
    tip.className = "plot-tip";
    tip.hidden = true;
    return {
      width, height: figure.classList.contains("wide") ? 240 : 150,
      series,
      bands: cols.band ? [{ series: [2, 3], fill: "rgba(31,111,235,0.12)" }] : [],
      scales: {
        x: { time: true, range: (u, lo, hi) => {  // the span with data; one sample: the two minutes around it
          const xs = u.data[0] || [];  // (uPlot itself widens one point by 86400/ms: years when times are seconds)
          if (xs.length && xs[0] === xs[xs.length - 1]) return [xs[0] - 60, xs[0] + 60];
          return lo === hi ? [lo - 60, hi + 60] : [lo, hi];
        } },
        y: { range: (u, lo, hi) => {
          if (yMax !== null) return [0, yMax];
          if (lo === null || hi === null) return [0, 1];
          const low = fromZero ? Math.min(0, lo) : lo, high = hi === low ? low + 1 : hi;
          const margin = fromZero ? 0 : (high - low) * 0.1;
          return [low - margin, high + (high - low) * 0.1];
        } },
      },
      axes: [
        { stroke: MUTED, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 } },
        { stroke: MUTED, grid: { stroke: GRID, width: 1 }, ticks: { stroke: GRID, width: 1 }, size: 70,
          values: (u, splits) => splits.map((v) => fmt(v, kind)) },
      ],
      cursor: { drag: { x: true, y: false } },
      legend: { show: true, live: true },
      hooks: {
        init: [(u) => u.over.appendChild(tip)],
        setCursor: [(u) => {
          const i = u.cursor.idx;
          if (i === null || i === undefined || u.cursor.left < 0) { tip.hidden = true; return; }
          const lines = [fmtTime(u.data[0][i], true)];
          u.series.forEach((s, si) => { if (si > 0 && s.show) lines.push(`${s.label} ${fmt(u.data[si][i], kind)}`); });
          tip.textContent = lines.join("\n");
          tip.hidden = false;
          const left = Math.min(u.cursor.left + 12, Math.max(u.over.clientWidth - tip.offsetWidth, 0));
          tip.style.transform = `translate(${left}px, ${Math.max(u.cursor.top - tip.offsetHeight - 8, 0)}px)`;
        }],
        setSelect: [(u) => { if (u.select.width > 0) figure.dataset.zoomed = "1"; }],
      },
    };
  }

  function draw(figure, body) {
    const cols = columns(figure, body);
    let chart = figure.fieldgatePlot;
    let note = figure.querySelector(".plot-empty");
    if (!hasData(cols.data)) {
      if (chart) { chart.destroy(); figure.fieldgatePlot = null; }
      if (!note) {
        note = document.createElement("p");
        note.className = "plot-empty muted";
        figure.appendChild(note);
      }
      note.textContent = `${figure.dataset.plotTitle || "Plot"}: no data in this window yet.`;
      figure.dataset.points = "0";
      return;
    }
    if (note) note.remove();
    for (const fallback of figure.querySelectorAll(":scope > svg, :scope > .plot-fallback")) fallback.remove();
    if (chart && chart.fieldgateLabels === cols.labels.join()) {
      chart.setData(cols.data, figure.dataset.zoomed !== "1");
    } else {
      if (chart) chart.destroy();
      let title = figure.querySelector(":scope > figcaption");
      if (!title && figure.dataset.plotTitle) {
        title = document.createElement("figcaption");
        figure.prepend(title);
      }
      if (title && figure.dataset.plotTitle) title.textContent = figure.dataset.plotTitle;
      chart = new window.uPlot(options(figure, cols, Math.max(figure.clientWidth, 260)), cols.data, figure);
      chart.fieldgateLabels = cols.labels.join();
      chart.root.addEventListener("dblclick", () => { delete figure.dataset.zoomed; });
      figure.fieldgatePlot = chart;
    }
    figure.dataset.points = String(cols.data[0].length);
  }

  function groupOf(figure) {
    return figure.closest("[data-plot-group]") || figure;
  }

  async function load(figure, windowName, cache) {
    const src = figure.dataset.plotSrc;
    if (!src) return;
    const url = `${src}${src.includes("?") ? "&" : "?"}window=${encodeURIComponent(windowName)}`;
    if (!cache.has(url)) {
      cache.set(url, fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin" })
        .then((response) => (response.ok ? response.json() : Promise.reject(new Error(`HTTP ${response.status}`)))));
    }
    try {
      draw(figure, await cache.get(url));
      figure.classList.remove("plot-failed");
    } catch (error) {
      figure.classList.add("plot-failed");  // the SVG (or the last plot) stays
      figure.title = `the plot could not be loaded: ${error.message}`;
    }
  }

  function refreshGroup(group) {
    const windowName = group.dataset.plotWindow || "1h";
    const cache = new Map();
    const figures = group.matches("figure[data-plot-src]") ? [group] : group.querySelectorAll("figure[data-plot-src]");
    for (const figure of figures) load(figure, windowName, cache);
    for (const control of group.querySelectorAll("[data-window]")) {
      control.classList.toggle("active", control.dataset.window === windowName);
    }
    clearTimeout(group.fieldgateTimer);
    group.fieldgateTimer = setTimeout(function again() {
      if (document.hidden) { group.fieldgateTimer = setTimeout(again, 5000); return; }
      refreshGroup(group);
    }, (REFRESH[windowName] || 60) * 1000);
  }

  function setUp(group) {
    if (group.fieldgateReady) return;
    group.fieldgateReady = true;
    if (!group.querySelector("[data-window]") && group.dataset.plotWindows) {
      const bar = document.createElement("div");
      bar.className = "windows";
      for (const name of group.dataset.plotWindows.split(" ")) {
        const button = document.createElement("button");
        button.type = "button";
        button.className = "link";
        button.dataset.window = name;
        button.textContent = name;
        bar.appendChild(button);
      }
      group.prepend(bar);
    }
    group.addEventListener("click", (event) => {
      const control = event.target.closest("[data-window]");
      if (!control || !group.contains(control)) return;
      event.preventDefault();
      group.dataset.plotWindow = control.dataset.window;
      for (const figure of group.querySelectorAll("figure[data-plot-src]")) delete figure.dataset.zoomed;
      refreshGroup(group);
    });
    refreshGroup(group);
  }

  function start() {
    const groups = new Set();
    for (const figure of document.querySelectorAll("figure[data-plot-src]")) groups.add(groupOf(figure));
    for (const group of groups) setUp(group);
  }

  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => {
      for (const figure of document.querySelectorAll("figure[data-plot-src]")) {
        const chart = figure.fieldgatePlot;
        if (chart) chart.setSize({ width: Math.max(figure.clientWidth, 260), height: chart.height });
      }
    }, 200);
  });

  // for pages that change a figure's source (the device page's property links)
  window.fieldgatePlots = {
    show(figure) {
      if (figure.fieldgatePlot) { figure.fieldgatePlot.destroy(); figure.fieldgatePlot = null; }
      delete figure.dataset.zoomed;
      const group = groupOf(figure);
      if (group.fieldgateReady) refreshGroup(group); else setUp(group);
    },
    fmt,
  };
  start();
})();
