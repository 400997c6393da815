// pifarm fleet page: refresh the server-rendered fragment in place (no build step, no CDN).
// The server escapes everything it renders; this script only swaps that HTML in, keeps open
// <details>, pauses while the tab is hidden and says so when the aggregator stops answering.
(function () {
  "use strict";
  var root = document.getElementById("fleet");
  if (!root || !root.getAttribute("data-src")) { return; }
  var every = Math.max(1, Number(root.getAttribute("data-refresh")) || 5) * 1000;
  var src = root.getAttribute("data-src");
  var live = document.getElementById("live");
  var busy = false;

  function say(text, ok) {
    if (live) { live.textContent = text; live.className = ok ? "live ok" : "live lost"; }
  }

  function tick() {
    if (busy || document.hidden) { return; }
    busy = true;
    var ctl = window.AbortController ? new AbortController() : null;
    var timer = ctl ? setTimeout(function () { ctl.abort(); }, every * 3) : null;
    fetch(src, { cache: "no-store", credentials: "same-origin", signal: ctl ? ctl.signal : undefined,
                 headers: { "Accept": "text/html" } })
      .then(function (r) {
        if (!r.ok) { throw new Error("HTTP " + r.status); }
        return r.text();
      })
      .then(function (html) {
        var open = Array.prototype.map.call(root.querySelectorAll("details[open][id]"), function (d) { return d.id; });
        root.innerHTML = html;
        open.forEach(function (id) { var d = document.getElementById(id); if (d) { d.open = true; } });
        root.setAttribute("data-updated", String(Date.now()));
        say("live · updated " + new Date().toLocaleTimeString(), true);
      })
      .catch(function (err) {
        say("aggregator not answering (" + (err && err.name === "AbortError" ? "timeout" : err.message) + "); retrying", false);
      })
      .then(function () { busy = false; if (timer) { clearTimeout(timer); } });
  }

  setInterval(tick, every);
  document.addEventListener("visibilitychange", function () { if (!document.hidden) { tick(); } });
})();
