// fieldgate workload page: follows the app's log by polling GET /api/v1/workloads/<ns>/<name>/logs with the cursor
// of the last answer. The page works without it (a reload shows the newest lines); this only appends new ones.
"use strict";

(function () {
  const table = document.getElementById("workload-log");
  if (!table) return;
  const body = table.tBodies[0];
  const live = document.getElementById("live");
  const MAX_ROWS = 2000;
  const EVERY_MS = 1000;
  let cursor = table.dataset.cursor || "0";

  const { fmtTime, cell } = window.fieldgateLogTable;

  function row(line) {
    const tr = document.createElement("tr");
    tr.className = `log-line stream-${line.stream}`;
    tr.dataset.seq = String(line.seq);
    tr.append(cell("ts", fmtTime(line.ts)),
      cell("", line.container ? `${line.instance} ${line.container}` : line.instance), cell("", line.stream),
      cell("message", line.line));
    return tr;
  }

  async function poll() {
    try {
      const only = table.dataset.container ? `&container=${encodeURIComponent(table.dataset.container)}` : "";
      const response = await fetch(`${table.dataset.url}?cursor=${encodeURIComponent(cursor)}${only}`,
        { headers: { Accept: "application/json" }, credentials: "same-origin" });
      if (!response.ok) throw new Error(String(response.status));
      const answer = await response.json();
      for (const line of answer.lines) body.append(row(line));
      while (body.rows.length > MAX_ROWS) body.deleteRow(0);
      cursor = String(answer.cursor);
      table.dataset.cursor = cursor;
      if (live) live.classList.add("on");
    } catch (error) {
      if (live) live.classList.remove("on");
    }
    setTimeout(poll, EVERY_MS);
  }

  setTimeout(poll, EVERY_MS);
})();
