/* cloud-config editor: a line-number gutter next to [data-cc-editor] that follows the text and its
 * scrolling, and a click on a validation entry (li[data-line]) selects that line in the text.
 * Validation itself is htmx (hx-post to the validate endpoint on keyup, delay 400 ms). */
(function () {
  "use strict";
  function setup(area) {
    var gutter = area.parentNode.querySelector("[data-cc-gutter]");
    function render() {
      if (!gutter) return;
      var n = area.value.split("\n").length, out = [];
      for (var i = 1; i <= n; i++) out.push(i);
      gutter.textContent = out.join("\n");
      gutter.scrollTop = area.scrollTop;
    }
    area.addEventListener("input", render);
    area.addEventListener("scroll", function () { if (gutter) gutter.scrollTop = area.scrollTop; });
    render();
  }
  function selectLine(area, line) {
    var lines = area.value.split("\n"), start = 0;
    for (var i = 0; i < line - 1 && i < lines.length; i++) start += lines[i].length + 1;
    var end = start + (lines[line - 1] || "").length;
    area.focus();
    area.setSelectionRange(start, end);
  }
  document.addEventListener("click", function (ev) {
    var li = ev.target.closest && ev.target.closest("li[data-line]");
    var area = document.querySelector("[data-cc-editor]");
    if (li && area) selectLine(area, parseInt(li.dataset.line, 10));
  });
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-cc-editor]").forEach(setup);
  });
})();
