// fieldgate registry pages: small conveniences over forms that work without this script.
"use strict";

(function () {
  // Forms that delete ask first.
  document.addEventListener("submit", (event) => {
    const message = event.target.dataset && event.target.dataset.confirm;
    if (message && !window.confirm(message)) event.preventDefault();
  });

  // A "tick all" box ticks the boxes of its form that carry the name it names.
  for (const all of document.querySelectorAll("input[data-select-all]")) {
    all.addEventListener("change", () => {
      for (const box of all.form.querySelectorAll(`input[type=checkbox][name="${all.dataset.selectAll}"]`)) {
        box.checked = all.checked;
      }
    });
  }

  // Remove a node: the button works once the node's name is typed (the server checks it again).
  for (const input of document.querySelectorAll("input[data-confirm-name]")) {
    const button = input.form.querySelector("[data-needs-confirm]");
    const update = () => { button.disabled = input.value.trim() !== input.dataset.confirmName; };
    input.addEventListener("input", update);
    update();
  }

  // The group form: the nodes it would hold, asked of the registry as you type.
  const form = document.getElementById("group-form");
  if (!form) return;
  const body = document.getElementById("preview-nodes");
  const problems = document.getElementById("preview-problems");
  const count = document.getElementById("preview-count");
  let timer = null;
  let asked = 0;

  function cell(row, tag, text) {
    const element = document.createElement(tag);
    element.textContent = text;
    row.appendChild(element);
    return element;
  }

  function show(answer) {
    body.replaceChildren();
    problems.replaceChildren();
    for (const problem of answer.problems) {
      const item = document.createElement("li");
      item.className = "error";
      item.textContent = problem;
      problems.appendChild(item);
    }
    for (const node of answer.nodes) {
      const row = document.createElement("tr");
      row.dataset.node = node.name;
      const link = document.createElement("a");
      link.href = `/nodes/${encodeURIComponent(node.name)}`;
      link.textContent = node.name;
      cell(row, "th", "").appendChild(link);
      cell(row, "td", node.status);
      cell(row, "td", node.why);
      cell(row, "td", Object.entries(node.labels).map(([k, v]) => `${k}=${v}`).join(", "));
      body.appendChild(row);
    }
    if (!answer.nodes.length) {
      const row = document.createElement("tr");
      cell(row, "td", "No node matches (yet).").colSpan = 4;
      body.appendChild(row);
    }
    count.textContent = String(answer.nodes.length);
  }

  async function preview() {
    const params = new URLSearchParams();
    for (const name of ["workspace", "selector", "nodes"]) {
      const field = form.elements.namedItem(name);
      if (field) params.set(name, field.value);
    }
    if (form.dataset.group) params.set("group", form.dataset.group);
    const mine = ++asked;
    try {
      const response = await fetch(`${form.dataset.preview}?${params}`, {
        headers: { "Accept": "application/json" }, credentials: "same-origin",
      });
      if (response.ok && mine === asked) show(await response.json());
    } catch (error) {
      // the next keystroke asks again
    }
  }

  form.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(preview, 250);
  });
})();
