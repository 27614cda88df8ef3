// Squid Mesh dashboard: live refresh of the runs list. Everything else is plain HTML.
"use strict";
(function () {
  const live = document.getElementById("runs-live");
  if (!live) return;
  const href = live.dataset.live;
  const secs = Number(live.dataset.refresh || 0);
  if (!href || !secs) return;
  let busy = false;
  async function refresh() {
    if (busy || document.hidden) return;
    busy = true;
    try {
      const r = await fetch(href, { headers: { Accept: "text/html" }, credentials: "same-origin" });
      // A redirect means the session ended (sign-in page): keep the list as it was.
      if (r.ok && !r.redirected) live.innerHTML = await r.text();
    } catch (_) {
      // A failed refresh keeps the last list; the next tick tries again.
    } finally {
      busy = false;
    }
  }
  setInterval(refresh, secs * 1000);
  document.addEventListener("visibilitychange", refresh);
})();
