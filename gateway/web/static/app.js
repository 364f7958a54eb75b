// fieldgate local UI: the device page's live twin values and poll counters (SSE), setpoints without a page reload,
// its history plot opened in place (drawn by the shared plot.js), confirmations. The pages work without it.
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
    if (snapshot.poll && window.fieldgateLive) window.fieldgateLive.apply(document, { poll: snapshot.poll });
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

  // History plot: the property's link opens the plot panel without a reload; plot.js draws it.
  const panel = document.getElementById("plot");
  const figure = document.getElementById("plot-area");
  for (const link of document.querySelectorAll("a.plot-open")) {
    link.addEventListener("click", (event) => {
      if (!panel || !figure || !window.fieldgatePlots) return;  // no plotting library: the link reloads the page
      event.preventDefault();
      const prop = link.dataset.prop;
      figure.dataset.plotSrc = `/devices/${device}/plot/${encodeURIComponent(prop)}`;
      figure.dataset.plotTitle = prop;
      figure.dataset.plotKind = link.dataset.unit || "count";
      for (const old of figure.querySelectorAll(":scope > svg")) old.remove();
      document.getElementById("plot-prop").textContent = prop;
      panel.hidden = false;
      window.fieldgatePlots.show(figure);
      panel.scrollIntoView({ block: "nearest" });
    });
  }
})();
