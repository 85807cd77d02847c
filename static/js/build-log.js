/* A build's log, streamed: <pre data-build-log="<id>" data-log-offset="<bytes>" data-log-url="...">.
 * Listens on its own /ws/ui/ socket for {"kind": "build-log", build, lines, start, end} notices and
 * appends them in file order; a gap (a notice missed while away) is filled from data-log-url?offset=. */
(function () {
  "use strict";
  var pre = document.querySelector("[data-build-log]");
  var path = document.body && document.body.dataset.liveSocket;
  if (!pre || !path || !window.WebSocket) return;
  var build = pre.dataset.buildLog, offset = parseInt(pre.dataset.logOffset || "0", 10), fetching = false;
  var encoder = window.TextEncoder ? new TextEncoder() : null;

  function append(text) {
    var atBottom = pre.scrollHeight - pre.scrollTop - pre.clientHeight < 40;
    pre.appendChild(document.createTextNode(text));
    if (atBottom) pre.scrollTop = pre.scrollHeight;
  }

  function catchUp() {
    if (fetching) return;
    fetching = true;
    fetch(pre.dataset.logUrl + "?offset=" + offset, {credentials: "same-origin"}).then(function (r) {
      var next = parseInt(r.headers.get("X-Log-Offset") || String(offset), 10);
      return r.text().then(function (text) { if (next > offset) { append(text); offset = next; } });
    }).finally(function () { fetching = false; });
  }

  function onNotice(c) {
    if (String(c.build) !== build || !c.lines) return;
    if (c.end <= offset) return;                 // already shown
    if (c.start !== offset || fetching) { catchUp(); return; }
    var text = c.lines.join("\n") + "\n";
    append(text);
    offset = encoder ? offset + encoder.encode(text).length : c.end;
  }

  var delay = 1000;
  function connect() {
    var socket = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + path);
    socket.onopen = function () { delay = 1000; catchUp(); };
    socket.onmessage = function (msg) {
      var frame;
      try { frame = JSON.parse(msg.data); } catch (e) { return; }
      if (!frame || frame.type !== "changes") return;
      if ((frame.count || 0) > (frame.changes || []).length) { catchUp(); return; }
      (frame.changes || []).forEach(function (c) { if (c.kind === "build-log") onNotice(c); });
    };
    socket.onclose = function (ev) {
      if (ev.code === 4401 || ev.code === 4403) return;
      setTimeout(connect, delay * (0.75 + Math.random() * 0.5));
      delay = Math.min(30000, delay * 2);
    };
  }
  connect();
})();
