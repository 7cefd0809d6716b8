// tcpstall's web page: the Now page puts the server's latest incidents in
// place every 2 s, without a reload. The fragment is HTML the server
// rendered and escaped; nothing here builds markup from data. On an
// episode's picture, the values at the time under the pointer are written
// under it (as text, from the column's SVG <title>).
"use strict";
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
(function () {
  const live = document.getElementById("live");
  if (!live) return;
  const status = document.getElementById("live-status");
  const src = live.dataset.src;
  async function refresh() {
    try {
      const r = await fetch(src, { credentials: "same-origin", cache: "no-store" });
      if (r.status === 401) {
        window.location.assign("/signin");
        return;
      }
      if (!r.ok) throw new Error("the collector answered " + r.status);
      live.innerHTML = await r.text();
      if (status) status.textContent = "Updated " + new Date().toLocaleTimeString() + "; updates by itself every 2 s.";
    } catch (e) {
      if (status) status.textContent = "Not updated: " + e.message;
    }
  }
  setInterval(refresh, 2000);
})();
// The Flow page: both ends again every 2 s. Each ask is a POST (it asks
// the ends' hosts to watch), with the endpoints the server put on the page.
(function () {
  const live = document.getElementById("flow-live");
  if (!live) return;
  const status = document.getElementById("flow-status");
  const body = new URLSearchParams({ a: live.dataset.a, b: live.dataset.b });
  async function refresh() {
    try {
      const r = await fetch("/flow/live", { method: "POST", body, credentials: "same-origin", cache: "no-store" });
      if (r.status === 401) {
        window.location.assign("/signin");
        return;
      }
      if (!r.ok) throw new Error("the collector answered " + r.status);
      live.innerHTML = await r.text();
      if (status) status.textContent = "Watching; updated " + new Date().toLocaleTimeString() + ", by itself every 2 s.";
    } catch (e) {
      if (status) status.textContent = "Not updated: " + e.message;
    }
  }
  setInterval(refresh, 2000);
})();
