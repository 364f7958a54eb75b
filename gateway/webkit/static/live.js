// fieldgate live pages, on both UIs: an element with data-live-source="URL" follows that server-sent event stream
// (events `update`, or those named in data-live-events) without a reload. Each event is a JSON object of groups
// (gateway/webkit/live.py): a record {field: value} goes to the element marked data-live="group", rows {id:
// {field: value}} to its descendants marked data-live-row="id"; inside, elements marked data-live-field="field" take
// the value, shown as data-live-format says: text (default), badge (a state), ago (a unix time: "12 s ago"), shown
// (the element shows while the value is true). A list [{field: value}, …] replaces the group's [data-live-item-row]
// rows with copies of its <template data-live-item>, filled as above, plus data-live-href="field" (a link to a
// path), data-live-title="field" and data-live-dataset="name=field"; [data-live-empty] shows when it is empty.
// `removed` marks rows gone; a row the page does not have yet unhides the group's [data-live-new] note.
// The stream's state shows on [data-live-status] ("● live"; the reason when the server ends it).
"use strict";

(function () {
  // the badge colour of a state, as gateway/webkit/templating.py BADGES gives it to the state_badge macro
  const BADGE = {};
  for (const [colour, states] of Object.entries({
    online: "online healthy running ready completed applied succeeded valid active current ok",
    offline: "offline failed stopped rejected refused revoked oom lost rolled-back rollback-failed expired cancelled error",
    unknown: "unknown joined not-placed skipped none",
  })) for (const state of states.split(" ")) BADGE[state] = colour;
  BADGE["in sync"] = "online";
  BADGE["used up"] = "unknown";

  function ago(ts) {
    if (!ts) return "never";
    const seconds = Math.max(Date.now() / 1000 - ts, 0);
    for (const [limit, unit, size] of [[90, "s", 1], [5400, "min", 60], [172800, "h", 3600]]) {
      if (seconds < limit) return `${Math.round(seconds / size)} ${unit} ago`;
    }
    return `${Math.round(seconds / 86400)} d ago`;
  }

  function show(element, value, quiet) {
    const format = element.dataset.liveFormat || "text";
    let text;
    if (format === "shown") { element.hidden = !value; return; }
    if (format === "badge") {
      text = String(value);
      element.className = `badge ${BADGE[text] || "unhealthy"}`;
      element.dataset.status = text;
    } else if (format === "ago") {
      element.dataset.ts = value === null ? "" : String(value);
      text = ago(value);
    } else {
      text = value === null || value === undefined ? "–" : String(value);
    }
    if (element.textContent !== text) {
      element.textContent = text;
      if (format !== "ago" && !quiet) {
        element.classList.remove("changed");
        void element.offsetWidth;  // restart the highlight
        element.classList.add("changed");
      }
    }
  }

  const has = (fields, name) => Object.prototype.hasOwnProperty.call(fields, name);

  function fill(scope, fields, quiet) {
    for (const element of scope.querySelectorAll("[data-live-field]")) {
      const name = element.dataset.liveField;
      if (has(fields, name)) show(element, fields[name], quiet);
    }
    for (const element of [scope, ...scope.querySelectorAll("[data-live-dataset]")]) {
      for (const pair of (element.dataset.liveDataset || "").split(" ").filter(Boolean)) {
        const [name, field] = pair.split("=");
        if (has(fields, field)) element.dataset[name] = String(fields[field]);
      }
    }
  }

  function list(box, items) {
    const template = box.querySelector("template[data-live-item]");
    if (!template || !template.content.firstElementChild) return;
    for (const row of box.querySelectorAll("[data-live-item-row]")) if (!row.closest("template")) row.remove();
    const empty = box.querySelector("[data-live-empty]");
    if (empty) empty.hidden = items.length > 0;
    const made = document.createDocumentFragment();
    for (const item of items) {
      const row = template.content.firstElementChild.cloneNode(true);
      fill(row, item, true);
      for (const element of [row, ...row.querySelectorAll("*")]) {
        const href = element.dataset.liveHref, title = element.dataset.liveTitle;
        const path = href && typeof item[href] === "string" ? item[href] : "";
        if (path.startsWith("/") && !path.startsWith("//")) element.setAttribute("href", path);  // this site's paths only
        if (title && has(item, title)) element.title = String(item[title]);
      }
      made.appendChild(row);
    }
    box.insertBefore(made, empty && empty.parentNode === box ? empty : null);
  }

  const isRows = (value) => value && typeof value === "object" &&
    Object.values(value).every((row) => row && typeof row === "object" && !Array.isArray(row));

  function rowsOf(box) {
    const rows = new Map();
    for (const row of box.querySelectorAll("[data-live-row]")) rows.set(row.dataset.liveRow, row);
    return rows;
  }

  function apply(root, data) {
    for (const [group, value] of Object.entries(data)) {
      if (group === "removed") continue;
      const boxes = [...root.querySelectorAll("[data-live]")].filter((box) => box.dataset.live === group);
      if (root.dataset && root.dataset.live === group) boxes.push(root);
      for (const box of boxes) {
        if (Array.isArray(value)) { list(box, value); continue; }
        if (!isRows(value)) { fill(box, value); continue; }
        const rows = rowsOf(box);
        let unseen = 0;
        for (const [id, fields] of Object.entries(value)) {
          const row = rows.get(id);
          if (!row) { unseen += 1; continue; }
          row.classList.remove("gone");
          fill(row, fields);
        }
        const note = box.querySelector("[data-live-new]") || root.querySelector("[data-live-new]");
        if (note && unseen) note.hidden = false;
      }
    }
    for (const [group, ids] of Object.entries(data.removed || {})) {
      for (const box of root.querySelectorAll("[data-live]")) {
        if (box.dataset.live !== group) continue;
        const rows = rowsOf(box);
        for (const id of ids) { const row = rows.get(id); if (row) row.classList.add("gone"); }
      }
    }
  }

  function connect(root) {
    const status = root.querySelector("[data-live-status]") || document.querySelector("[data-live-status]");
    const say = (on, text) => {
      if (!status) return;
      status.classList.toggle("on", on);
      if (text) status.textContent = text;
    };
    const source = new EventSource(root.dataset.liveSource);
    const onEvent = (event) => apply(root, JSON.parse(event.data));
    for (const name of (root.dataset.liveEvents || "update").split(" ")) source.addEventListener(name, onEvent);
    source.addEventListener("closed", (event) => { source.close(); say(false, `live updates stopped: ${event.data}`); });
    source.onopen = () => say(true, "● live");
    source.onerror = () => say(false);
    window.addEventListener("pagehide", () => source.close());
  }

  setInterval(() => {  // times shown as "… ago" age on their own
    for (const element of document.querySelectorAll('[data-live-format="ago"][data-ts]')) {
      element.textContent = ago(Number(element.dataset.ts));
    }
  }, 5000);

  window.fieldgateLive = { apply, ago };
  for (const root of document.querySelectorAll("[data-live-source]")) connect(root);
})();
