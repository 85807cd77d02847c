/* Copy buttons: <button data-copy="#selector"> copies the text of the selected element. */
(function () {
  "use strict";
  function fallback(text) {
    var area = document.createElement("textarea");
    area.value = text;
    area.setAttribute("readonly", "");
    area.style.position = "fixed"; area.style.opacity = "0";
    document.body.appendChild(area);
    area.select();
    try { document.execCommand("copy"); } finally { document.body.removeChild(area); }
    return Promise.resolve();
  }
  document.addEventListener("click", function (ev) {
    var button = ev.target.closest("[data-copy]");
    if (!button) return;
    var source = document.querySelector(button.dataset.copy);
    if (!source) return;
    var text = source.textContent.trim();
    var copy = navigator.clipboard && window.isSecureContext ? navigator.clipboard.writeText(text) : fallback(text);
    var label = button.textContent;
    copy.then(function () { button.textContent = "Copied ✓"; },
              function () { button.textContent = "Select and copy"; })
        .finally(function () { setTimeout(function () { button.textContent = label; }, 1800); });
  });
})();
