// txregistry web UI: optional enhancements; every page works without them.
"use strict";

// Filter the rows of a table as the person types: <input data-filter="TABLE-ID">.
function setUpFilters() {
  document.querySelectorAll("input[data-filter]").forEach(function (input) {
    var table = document.getElementById(input.getAttribute("data-filter"));
    if (!table) { return; }
    input.addEventListener("input", function () {
      var needle = input.value.toLowerCase();
      table.querySelectorAll("tbody tr").forEach(function (row) {
        var first = row.cells[0] ? row.cells[0].textContent.toLowerCase() : "";
        row.classList.toggle("hidden", needle !== "" && first.indexOf(needle) < 0);
      });
    });
  });
}

// Copy buttons: <button data-copy="TEXT">; says "Copied" once the text is on the clipboard.
function copyText(text) {
  if (navigator.clipboard && window.isSecureContext) {
    return navigator.clipboard.writeText(text);
  }
  return new Promise(function (resolve, reject) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "absolute";
    area.style.left = "-9999px";
    document.body.appendChild(area);
    area.select();
    var ok = document.execCommand("copy");
    document.body.removeChild(area);
    if (ok) { resolve(); } else { reject(new Error("copy refused")); }
  });
}

function setUpCopyButtons() {
  document.querySelectorAll("button[data-copy]").forEach(function (button) {
    button.addEventListener("click", function () {
      copyText(button.getAttribute("data-copy")).then(function () {
        button.textContent = "Copied";
        button.setAttribute("data-copied", "true");
      }, function () {
        button.textContent = "Select and copy";
      });
    });
  });
}

// Ask before deleting.
function setUpDeletes() {
  document.querySelectorAll("form.delete").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      var label = form.querySelector("button").getAttribute("aria-label") || "Delete";
      if (!window.confirm(label + "?")) { event.preventDefault(); }
    });
  });
}

document.addEventListener("DOMContentLoaded", function () {
  setUpFilters();
  setUpCopyButtons();
  setUpDeletes();
});
