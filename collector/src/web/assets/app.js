// tcpstall's web page: the Now page puts the server's latest incidents in
// place every 2 s, without a reload. The fragment is HTML the server
// rendered and escaped; nothing here builds markup from data.
"use strict";
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
