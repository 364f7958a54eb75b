// fieldgate registry role picker: tick what a person needs and the least privileged role that covers it is picked
// (the roles are listed least privileged first; the form works without this script).
"use strict";

(function () {
  for (const picker of document.querySelectorAll("fieldset.roles")) {
    const needs = picker.querySelectorAll("input[data-need]");
    const out = picker.querySelector("[data-covering]");
    const choose = () => {
      const wanted = [...needs].filter((box) => box.checked).map((box) => box.value);
      if (!wanted.length) { out.textContent = ""; return; }
      for (const choice of picker.querySelectorAll("label.role-choice")) {
        const held = new Set([...choice.querySelectorAll("[data-permission]")].map((p) => p.dataset.permission));
        if (wanted.every((p) => held.has(p))) {
          choice.querySelector("input[name=role]").checked = true;
          out.textContent = `Picked ${choice.dataset.role}: the least privileged role you may grant that holds ${wanted.join(", ")}.`;
          return;
        }
      }
      out.textContent = `No role you may grant holds ${wanted.join(", ")}.`;
    };
    for (const box of needs) box.addEventListener("change", choose);
  }
})();
