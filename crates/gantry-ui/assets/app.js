// Gantry's script: the live parts of server-rendered pages. Plain JavaScript, no dependency.
// Every page reads without it; it adds relative ages, live refresh, and the job log.
(function () {
  "use strict";

  // Ages: "3 min ago"; the exact time stays in the title.
  function ages(root) {
    const now = Date.now();
    for (const t of root.querySelectorAll("time[datetime]")) {
      const s = Math.round((now - Date.parse(t.getAttribute("datetime"))) / 1000);
      if (isNaN(s)) continue;
      t.textContent = s < 60 ? "just now" : s < 3600 ? Math.floor(s / 60) + " min ago"
        : s < 86400 ? Math.floor(s / 3600) + " h ago" : Math.floor(s / 86400) + " d ago";
    }
  }

  // A page whose main has data-live is fetched again every few seconds while something runs,
  // and its main replaced (the server renders it, escaped, as on the first load).
  function live() {
    const main = document.getElementById("main");
    if (!main || !main.hasAttribute("data-live")) return;
    setTimeout(async function tick() {
      try {
        const r = await fetch(location.href, { credentials: "same-origin" });
        if (r.ok) {
          const doc = new DOMParser().parseFromString(await r.text(), "text/html");
          const fresh = doc.getElementById("main");
          const focused = document.activeElement && document.activeElement.id;
          if (fresh) {
            main.replaceChildren(...fresh.childNodes);
            ages(main);
            if (focused) { const f = document.getElementById(focused); if (f) f.focus(); }
            if (!fresh.hasAttribute("data-live")) { main.removeAttribute("data-live"); return; }
          }
        }
      } catch (e) { /* the server is away: try again */ }
      setTimeout(tick, 3000);
    }, 3000);
  }

  // The job log: chunks of rendered lines fetched one after another (yielding between them, so
  // that a big log never freezes the page), then followed over Server-Sent Events.
  function log() {
    const box = document.getElementById("log");
    if (!box) return;
    const id = box.getAttribute("data-job");
    let from = 0, line = 1, done = false, busy = false, again = false, source = null;
    const open = []; // the sections open at the end of what is shown: {name, collapsed}

    function place(nodes) {
      for (const el of nodes) {
        const s = el.getAttribute("data-s"), e = el.getAttribute("data-e");
        if (open.some(function (o) { return o.collapsed; })) el.hidden = true;
        if (s) {
          const collapsed = el.getAttribute("data-c") === "1";
          open.push({ name: s, collapsed: collapsed });
          if (collapsed) el.querySelector(".tog").setAttribute("aria-expanded", "false");
        } else if (e) {
          const i = open.map(function (o) { return o.name; }).lastIndexOf(e);
          if (i >= 0) open.length = i;
        }
      }
    }

    async function pull() {
      if (busy) { again = true; return; }
      busy = true;
      do {
        again = false;
        for (;;) {
          const r = await fetch("/jobs/" + id + "/log.html?from=" + from + "&line=" + line,
            { credentials: "same-origin" });
          if (!r.ok) break;
          const html = await r.text();
          const next = Number(r.headers.get("x-next-from"));
          const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
          if (html) {
            const t = document.createElement("template");
            t.innerHTML = html;
            const nodes = Array.from(t.content.children);
            place(nodes);
            box.append(t.content);
            if (atEnd && !location.hash) box.scrollTop = box.scrollHeight;
          }
          line = Number(r.headers.get("x-next-line")) || line;
          if (r.headers.get("x-done") === "1") done = true;
          if (next === from) break;
          from = next;
          await new Promise(function (k) { setTimeout(k, 0); });
        }
      } while (again);
      busy = false;
      if (location.hash && !box.dataset.jumped) {
        const target = document.getElementById(location.hash.slice(1));
        if (target) { target.scrollIntoView(); box.dataset.jumped = "1"; }
      }
      if (done && source) { source.close(); source = null; }
      if (!done && !source) follow();
    }

    function follow() {
      source = new EventSource("/jobs/" + id + "/log/stream?from=" + from);
      source.addEventListener("log", pull);
      source.addEventListener("end", function (ev) {
        // The job is over: its status in the heading, as the server would render it.
        try {
          const status = JSON.parse(ev.data).status;
          const badge = document.querySelector("h1 .badge");
          if (badge && status) {
            badge.className = "badge st-" + status;
            badge.querySelector(".stext").textContent = status;
          }
        } catch (e) { /* keep the heading */ }
        pull();
      });
    }

    box.addEventListener("click", function (ev) {
      const tog = ev.target.closest(".tog");
      if (!tog) return;
      const head = tog.parentElement, name = head.getAttribute("data-s");
      const show = tog.getAttribute("aria-expanded") === "false";
      tog.setAttribute("aria-expanded", show ? "true" : "false");
      for (let el = head.nextElementSibling; el; el = el.nextElementSibling) {
        el.hidden = !show;
        if (el.getAttribute("data-e") === name) break;
      }
    });
    pull();
  }

  document.addEventListener("DOMContentLoaded", function () {
    ages(document);
    live();
    log();
  });
})();
