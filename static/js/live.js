/* Live updates: one socket to /ws/ui/ per page (data-live-socket on <body>).
 * The server sends {"type": "changes", "changes": [{kind: "host"|"group"|"event", ...}], "count": n};
 * every element marked data-live="host group event" whose kinds match is refreshed by htmx
 * (htmx.trigger(el, "live") with hx-trigger="live" + hx-get of its own fragment).
 * Optional narrowing: data-live-host="<uuid>", data-live-group="<id>".
 * Reconnects with capped exponential backoff and jitter, and refreshes everything on reconnect
 * (changes may have been missed while away). */
(function () {
  "use strict";
  var path = document.body && document.body.dataset.liveSocket;
  if (!path || !window.WebSocket) return;

  var MIN_DELAY = 1000, MAX_DELAY = 30000;
  var delay = MIN_DELAY, everConnected = false, socket = null;
  var indicator = document.querySelector("[data-live-state]");

  function setState(state) {
    if (indicator) { indicator.dataset.liveState = state; indicator.textContent = state === "open" ? "live" : "offline"; }
  }

  function targets() { return document.querySelectorAll("[data-live]"); }

  function concerns(el, change) {
    var kinds = (el.dataset.live || "").split(/\s+/);
    if (kinds.indexOf(change.kind) < 0) return false;
    var host = el.dataset.liveHost, group = el.dataset.liveGroup;
    if (!host && !group) return true;
    var c = change.kind === "event" ? (change.event || {}) : change;
    if (change.kind === "host") return !host || String(c.host) === host;
    if (change.kind === "group") return !group || String(c.group) === group;
    return (host && String(c.host) === host) || (group && String(c.group) === group);
  }

  function refresh(el) {
    // One request at a time per element; a change during a request re-runs it once afterwards.
    if (el.dataset.liveBusy) { el.dataset.liveAgain = "1"; return; }
    el.dataset.liveBusy = "1";
    if (window.htmx) htmx.trigger(el, "live");
  }

  document.addEventListener("htmx:afterRequest", function (ev) {
    var el = ev.detail.elt;
    if (!el || !el.dataset || el.dataset.live === undefined) return;
    delete el.dataset.liveBusy;
    if (el.dataset.liveAgain) {
      delete el.dataset.liveAgain;
      // The element may have been swapped out: refresh whatever carries its id now.
      var now = el.id ? document.getElementById(el.id) : el;
      if (now) refresh(now);
    }
  });

  function onChanges(frame) {
    var changes = frame.changes || [];
    var truncated = (frame.count || 0) > changes.length;
    targets().forEach(function (el) {
      if (truncated || changes.some(function (c) { return concerns(el, c); })) refresh(el);
    });
  }

  function connect() {
    var url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + path;
    socket = new WebSocket(url);
    socket.onopen = function () {
      setState("open");
      delay = MIN_DELAY;
      if (everConnected) targets().forEach(refresh);
      everConnected = true;
    };
    socket.onmessage = function (msg) {
      var frame;
      try { frame = JSON.parse(msg.data); } catch (e) { return; }
      if (frame && frame.type === "changes") onChanges(frame);
    };
    socket.onclose = function (ev) {
      setState("closed");
      socket = null;
      if (ev.code === 4401 || ev.code === 4403) return;   // logged out / no organization: stop
      var wait = Math.min(MAX_DELAY, delay) * (0.75 + Math.random() * 0.5);
      delay = Math.min(MAX_DELAY, delay * 2);
      setTimeout(connect, wait);
    };
  }

  window.addEventListener("pageshow", function (ev) { if (ev.persisted && !socket) connect(); });
  connect();
})();
