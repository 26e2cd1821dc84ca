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

  // The job log, virtualised. It opens at the tail (or at the line of `#L123`); the log is held
  // as chunks of whole lines, each with its byte range and line range, and only the chunks near
  // the viewport are in the page: the others are spacers of their measured (or estimated) height,
  // and drop their HTML. Gaps between chunks load as they come near the viewport, and a running
  // job's tail follows over Server-Sent Events. Sections fold across chunks: a line's fold comes
  // from the section markers of the loaded chunks before it, up to the nearest gap.
  function log() {
    const box = document.getElementById("log");
    if (!box) return;
    const base = "/jobs/" + box.getAttribute("data-job") + "/log.html?";
    const BYTES = 64 * 1024; // the server's chunk (LOG_CHUNK)
    const chunks = []; // {from, to, line, next, html, marks, el, gap, h, shown}, by from
    const open = {}; // header line: expanded, as the user set it
    const lh = parseFloat(getComputedStyle(box).lineHeight) || 18; // one line's row
    let done = false, source = null, loading = false, pending = false;
    let pulling = false, again = false;

    // While chunks load, the log is `aria-busy`, so that screen readers wait for the lines.
    let fetching = 0;
    async function get(q) {
      fetching++;
      box.setAttribute("aria-busy", "true");
      try { return await fetched(q); } finally {
        if (--fetching === 0) box.removeAttribute("aria-busy");
      }
    }

    async function fetched(q) {
      const r = await fetch(base + q, { credentials: "same-origin" });
      if (!r.ok) return null;
      const n = function (k) { return Number(r.headers.get(k)); };
      const c = { from: n("x-from"), line: n("x-line"), to: n("x-next-from"), next: n("x-next-line"),
        html: await r.text(), marks: [], el: null, gap: null, h: null, shown: false };
      const re = /id="L(\d+)" data-([se])="([^"]*)"( data-c="1")?/g;
      for (let m; (m = re.exec(c.html));) c.marks.push({ n: Number(m[1]), k: m[2], name: m[3], c: !!m[4] });
      if (r.headers.get("x-done") === "1") done = true;
      return c;
    }

    // Drops the lines before `line` (which starts at byte `at`), or from it on.
    function cut(c, at, line, head) {
      const i = c.html.indexOf(' id="L' + line + '"');
      const j = i < 0 ? (head ? c.html.length : 0) : c.html.lastIndexOf("<div", i);
      c.html = head ? c.html.slice(j) : c.html.slice(0, j);
      c.marks = c.marks.filter(function (m) { return head ? m.n >= line : m.n < line; });
      if (head) { c.from = at; c.line = line; } else { c.to = at; c.next = line; }
    }

    // The hidden lines, as sorted, merged [first, last] ranges.
    function ranges() {
      const out = [];
      let stack = [], prev = null;
      function fold(o, end) { if (!expanded(o.n, o.c)) out.push([o.n + 1, end]); }
      function close() { if (prev) for (const o of stack) fold(o, prev.next - 1); stack = []; }
      for (const c of chunks) {
        if (prev && prev.to !== c.from) close();
        for (const m of c.marks) {
          if (m.k === "s") { stack.push(m); continue; }
          const i = stack.map(function (o) { return o.name; }).lastIndexOf(m.name);
          if (i >= 0) for (const o of stack.splice(i)) fold(o, m.n);
        }
        prev = c;
      }
      close();
      out.sort(function (a, b) { return a[0] - b[0]; });
      const merged = [];
      for (const r of out) {
        const last = merged[merged.length - 1];
        if (last && r[0] <= last[1] + 1) last[1] = Math.max(last[1], r[1]); else merged.push(r);
      }
      return merged;
    }
    function expanded(n, collapsed) { return n in open ? open[n] : !collapsed; }
    function hiddenIn(rs, a, b) { // how many of lines a..b-1 are hidden
      let k = 0;
      for (const r of rs) k += Math.max(0, Math.min(r[1], b - 1) - Math.max(r[0], a) + 1);
      return k;
    }

    // A chunk's rows: at least one (a piece of a line longer than a chunk keeps the line's number).
    function rows(c) { return Math.max(c.next - c.line, 1); }
    // Whether bytes are missing before chunk `i` (a chunk may start or end inside a long line, so
    // line numbers cannot tell).
    function gapAt(i) { return (i ? chunks[i - 1].to : 0) !== chunks[i].from; }

    function fold(c, rs) {
      let n = c.line;
      for (const el of c.el.children) {
        // The rest of a line begun in the chunk before has no anchor: it folds with that line.
        if (el.id) n = Number(el.id.slice(1));
        el.hidden = rs.some(function (r) { return n >= r[0] && n <= r[1]; });
        if (el.hasAttribute("data-s")) {
          el.querySelector(".tog").setAttribute("aria-expanded",
            String(expanded(n, el.getAttribute("data-c") === "1")));
        }
      }
    }
    function sizes(rs) {
      let prev = null;
      chunks.forEach(function (c, i) {
        const a = prev ? prev.next : 1;
        c.gap.style.height = gapAt(i) ? Math.max(c.line - a, 1) * lh + "px" : "";
        if (!c.shown) c.el.style.height = (c.h !== null ? c.h : (rows(c) - hiddenIn(rs, c.line, c.line + rows(c))) * lh) + "px";
        prev = c;
      });
    }
    let folded = "[]";
    function refold() {
      const rs = ranges(), changed = JSON.stringify(rs) !== folded;
      folded = JSON.stringify(rs);
      // A spacer's measured height holds while the folds it was measured with do.
      for (const c of chunks) { if (c.shown) fold(c, rs); else if (changed) c.h = null; }
      sizes(rs);
    }

    function show(c, rs) {
      c.el.innerHTML = c.html;
      c.el.style.height = "";
      c.shown = true;
      fold(c, rs || ranges());
    }
    function hide(c, h) {
      c.el.textContent = "";
      c.h = h;
      c.el.style.height = h + "px";
      c.shown = false;
      if (c !== chunks[chunks.length - 1]) c.html = null; // fetched again when needed
    }

    // Adds a chunk in its place, without the lines already held.
    function place(c) {
      for (const o of chunks) if (o.from <= c.from && c.from < o.to) cut(c, o.to, o.next, true);
      let i = 0;
      // After an empty chunk where this one starts (a running log's unfinished line, awaited).
      while (i < chunks.length && (chunks[i].from < c.from || chunks[i].to === c.from)) i++;
      const next = chunks[i];
      if (next && next.from < c.to) cut(c, next.from, next.line, false);
      if (chunks.length && c.to <= c.from) return;
      c.el = document.createElement("div");
      c.gap = document.createElement("div");
      c.gap.setAttribute("aria-hidden", "true");
      box.insertBefore(c.gap, next ? next.gap : null);
      box.insertBefore(c.el, next ? next.gap : null);
      chunks.splice(i, 0, c);
      refold();
    }

    // Shows the chunks near the viewport, hides the others, and answers the request that would
    // fill what is missing near it.
    function plan() {
      const top = box.scrollTop, h = box.clientHeight, lo = top - h, hi = top + 2 * h;
      const seen = chunks.map(function (c) {
        const y = c.el.offsetTop, eh = c.el.offsetHeight, gy = c.gap.offsetTop;
        return { near: y < hi && y + eh > lo, h: eh, gap: gy < hi && y > lo, gy: gy, gb: y };
      });
      let need = null;
      const rs = ranges();
      chunks.forEach(function (c, i) {
        // A chunk whose lines are all folded away stays a spacer (of no height).
        const want = seen[i].near && rows(c) > hiddenIn(rs, c.line, c.line + rows(c));
        if (want && !c.shown) {
          if (c.html !== null) show(c, rs);
          else if (!need) need = { q: "from=" + c.from + "&line=" + c.line, into: c };
        } else if (!want && c.shown) hide(c, seen[i].h);
      });
      for (let i = chunks.length - 1; i >= 0 && !need; i--) {
        const g = seen[i], c = chunks[i], prev = chunks[i - 1];
        if (!g.gap || !gapAt(i)) continue;
        if (g.gb <= hi) need = { q: "to=" + c.from + "&line=" + c.line };
        else if (g.gy >= lo) need = { q: prev ? "from=" + prev.to + "&line=" + prev.next : "from=0&line=1" };
        else need = { q: "line=" + ((prev ? prev.next : 1) + Math.floor((top - g.gy) / lh)) };
      }
      return need;
    }

    // Runs `change` with what is at the top of the viewport kept in place (or the very top): the
    // first shown chunk that reaches below it stays where it is (a spacer's height is a guess).
    function keep(change) {
      const top = box.scrollTop;
      const below = function (c) { return c.el.offsetTop + c.el.offsetHeight > top; };
      const anchor = chunks.find(function (c) { return c.shown && below(c); }) || chunks.find(below);
      const dy = anchor ? anchor.el.offsetTop - top : 0;
      const r = change();
      if (top === 0) box.scrollTop = 0;
      else if (anchor) box.scrollTop = anchor.el.offsetTop - dy;
      return r;
    }

    // Loads what the viewport needs, one request at a time.
    async function update() {
      if (loading) { pending = true; return; }
      loading = true;
      for (let i = 0; i < 100; i++) {
        pending = false;
        const need = keep(plan);
        if (!need) { if (pending) continue; break; }
        const c = await get(need.q);
        if (!c) break;
        if (need.into) {
          if (c.next > need.into.next) cut(c, need.into.to, need.into.next, false);
          need.into.html = c.html;
        } else keep(function () { place(c); });
      }
      loading = false;
    }

    // The new end of a running log: appended to the last chunk while it is small.
    async function pull() {
      if (pulling) { again = true; return; }
      pulling = true;
      do {
        again = false;
        for (;;) {
          const last = chunks[chunks.length - 1];
          const c = await get("from=" + last.to + "&line=" + last.next);
          if (!c || c.to === last.to) break;
          const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
          if (last.shown && c.to - last.from <= BYTES) {
            const t = document.createElement("template");
            t.innerHTML = c.html;
            last.html += c.html;
            last.marks = last.marks.concat(c.marks);
            last.to = c.to;
            last.next = c.next;
            last.el.append(t.content);
            refold();
          } else {
            place(c);
            show(c);
          }
          if (atEnd && !location.hash) box.scrollTop = box.scrollHeight;
          await new Promise(function (k) { setTimeout(k, 0); });
        }
      } while (again);
      pulling = false;
      if (done && source) { source.close(); source = null; }
      if (!done && !source) follow();
      update();
    }

    function follow() {
      source = new EventSource("/jobs/" + box.getAttribute("data-job") + "/log/stream?from="
        + chunks[chunks.length - 1].to);
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

    // `#L123`: the line, loaded if it is not.
    async function jump() {
      const m = /^#L(\d+)$/.exec(location.hash);
      if (!m) return;
      if (!document.getElementById("L" + m[1])) {
        const c = await get("line=" + m[1]);
        if (!c) return;
        place(c);
        const held = chunks.find(function (o) { return o.line <= m[1] && m[1] < o.next; });
        if (held && !held.shown && held.html !== null) show(held);
      }
      const target = document.getElementById("L" + m[1]);
      if (target) target.scrollIntoView();
      update();
    }

    box.addEventListener("click", function (ev) {
      const tog = ev.target.closest(".tog");
      if (!tog) return;
      const head = tog.parentElement;
      open[head.id.slice(1)] = tog.getAttribute("aria-expanded") === "false";
      keep(refold);
      update();
    });
    let frame = 0;
    box.addEventListener("scroll", function () {
      if (!frame) frame = requestAnimationFrame(function () { frame = 0; update(); });
    });
    window.addEventListener("hashchange", jump);
    (async function () {
      const c = await get("");
      if (!c) return;
      place(c);
      show(c);
      box.scrollTop = box.scrollHeight;
      await jump();
      pull();
    })();
  }

  document.addEventListener("DOMContentLoaded", function () {
    ages(document);
    live();
    log();
  });
})();
