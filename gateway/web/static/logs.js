// fieldgate Logs page: follows new lines by polling GET /api/v1/logs with the cursor of the last answer.
// The page works without it (the filters are a plain GET form); this only appends new lines as they come.
"use strict";

(function () {
  const table = document.getElementById("log-lines");
  if (!table) return;
  const body = table.tBodies[0];
  const live = document.getElementById("live");
  const count = document.getElementById("log-count");
  const MAX_ROWS = 5000;
  const EVERY_MS = 2000;
  let cursor = table.dataset.cursor || "0";
  let timer = null;

  const { fmtTime, cell } = window.fieldgateLogTable;

  function row(record) {
    const tr = document.createElement("tr");
    tr.className = `log-line level-${record.level}`;
    tr.dataset.id = String(record.id);
    tr.dataset.device = record.device || "";
    tr.append(cell("ts", fmtTime(record.ts)), cell("level", record.level), cell("device", record.device || ""));
    const logger = cell("logger", "");
    const small = document.createElement("small");
    small.textContent = record.logger;
    for (const key of ["route", "sink", "plugin"]) {
      if (!record[key]) continue;
      const label = document.createElement("span");
      label.className = "label";
      label.textContent = `${key} ${record[key]}`;
      small.append(" ", label);
    }
    logger.append(small);
    const message = cell("message", record.message);
    if (record.exception) {
      const details = document.createElement("details");
      const summary = document.createElement("summary");
      summary.textContent = "traceback";
      const pre = document.createElement("pre");
      pre.textContent = record.exception;
      details.append(summary, pre);
      message.append(details);
    }
    tr.append(logger, message);
    return tr;
  }

  async function poll() {
    timer = null;
    const query = table.dataset.query ? `${table.dataset.query}&` : "";
    try {
      const response = await fetch(`/api/v1/logs?${query}after=${encodeURIComponent(cursor)}`,
        { headers: { "Accept": "application/json" }, credentials: "same-origin" });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      const page = await response.json();
      const atBottom = window.innerHeight + window.scrollY >= document.body.scrollHeight - 40;
      if (page.records.length) {
        const empty = body.querySelector("tr.empty");
        if (empty) empty.remove();
        for (const record of page.records) body.append(row(record));
        while (body.rows.length > MAX_ROWS) body.deleteRow(0);
        if (count) count.textContent = `${body.querySelectorAll("tr.log-line").length} lines`;
        if (atBottom) window.scrollTo(0, document.body.scrollHeight);
      }
      cursor = String(page.cursor);
      table.dataset.cursor = cursor;
      if (live) live.classList.add("on");
      timer = setTimeout(poll, page.more ? 0 : EVERY_MS);
    } catch (exc) {
      if (live) live.classList.remove("on");
      timer = setTimeout(poll, EVERY_MS * 2);
    }
  }

  timer = setTimeout(poll, 0);
  window.addEventListener("pagehide", () => { if (timer) clearTimeout(timer); });
})();
