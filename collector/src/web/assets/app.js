// tcpstall's web page: the Now page and the Flow page put the server's
// latest in place every 2 s, without a reload. Each fragment is HTML the
// server rendered and escaped; nothing here builds markup from data. On
// an episode's picture, the values at the time under the pointer are
// written under it (as text, from the column's SVG <title>).
"use strict";

// Every 2 s: `request()` answered into `live`, or why not into `status`.
function follow(live, status, request, updated) {
  async function refresh() {
    try {
      const r = await request();
      if (r.status === 401) {
        window.location.assign("/signin");
        return;
      }
      if (!r.ok) throw new Error("the collector answered " + r.status);
      live.innerHTML = await r.text();
      if (status) status.textContent = updated(new Date().toLocaleTimeString());
    } catch (e) {
      if (status) status.textContent = "Not updated: " + e.message;
    }
  }
  setInterval(refresh, 2000);
}

// The Now page: its incidents.
(function () {
  const live = document.getElementById("live");
  if (!live) return;
  follow(
    live,
    document.getElementById("live-status"),
    () => fetch(live.dataset.src, { credentials: "same-origin", cache: "no-store" }),
    (at) => "Updated " + at + "; updates by itself every 2 s."
  );
})();

// The Flow page: both ends again. Each ask is a POST (it asks the ends'
// hosts to watch), with the endpoints the server put on the page.
(function () {
  const live = document.getElementById("flow-live");
  if (!live) return;
  const body = new URLSearchParams({ a: live.dataset.a, b: live.dataset.b });
  follow(
    live,
    document.getElementById("flow-status"),
    () => fetch("/flow/live", { method: "POST", body, credentials: "same-origin", cache: "no-store" }),
    (at) => "Watching; updated " + at + ", by itself every 2 s."
  );
})();

// An episode's picture: the values under the pointer.
(function () {
  const readout = document.getElementById("plot-readout");
  if (!readout) return;
  let on = null;
  function show(rect) {
    if (on) on.classList.remove("on");
    on = rect;
    rect.classList.add("on");
    const title = rect.querySelector("title");
    readout.textContent = title ? title.textContent : "";
  }
  for (const rect of document.querySelectorAll("figure.plot rect.hover-at")) {
    rect.addEventListener("mouseenter", () => show(rect));
    rect.addEventListener("click", () => show(rect));
  }
})();
