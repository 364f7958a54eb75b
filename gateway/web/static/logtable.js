// fieldgate log tables: the row helpers shared by the followers of the Logs page (logs.js) and a workload's page
// (workloads.js). Loaded before them; it only defines `window.fieldgateLogTable`.
"use strict";

window.fieldgateLogTable = (function () {
  const pad = (n) => String(n).padStart(2, "0");
  const fmtTime = (ts) => {
    const d = new Date(ts * 1000);
    return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
      `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
  };
  const cell = (className, text) => {
    const td = document.createElement("td");
    td.className = className;
    td.textContent = text;
    return td;
  };
  return Object.freeze({ fmtTime, cell });
})();
