//! A big job log in a real browser: the page opens at its tail, keeps only the lines near the
//! viewport in the DOM, jumps to `#L<n>` and scrolls to the first line, and a collapsed section
//! that spans many chunks folds whole. The browser helpers are `ui.rs`'s.

use serde_json::json;

use crate::server::{ADMIN, Setup, Store, job_named};
use crate::ui::{Browser, browser, runtime, until};

/// The most line elements the page may hold at once.
const MAX_LINES: u64 = 5000;

/// Whether line `n` is in the DOM, shown, and inside the log's box.
async fn visible(b: &Browser, n: usize) -> bool {
    let script = format!(
        "const el = document.getElementById('L{n}'); if (!el) return false; \
         const b = document.getElementById('log').getBoundingClientRect(); \
         const r = el.getBoundingClientRect(); \
         return !el.hidden && r.height > 0 && r.top >= b.top - 1 && r.bottom <= b.bottom + 1;"
    );
    b.js(&script).await == json!(true)
}

/// Runs the one job `name` of a new project `name` through a real agent: its id and its log.
fn run(s: &Setup, name: &str, ci: &str) -> (i64, String) {
    let (_repo, api) = s.project(name, ci);
    let _agent = s.agent("a1");
    let id = api.trigger(name);
    let p = api.finished(id);
    let job = job_named(&p, name).id;
    (job, api.log(job))
}

/// A browser signed in, on the job's page, once its last line (`last`) shows.
async fn at_tail(s: &Setup, job: i64, last: usize) -> Browser {
    let b = browser(&s.server.url).await;
    b.sign_in_to_projects(ADMIN).await;
    b.open(&format!("/jobs/{job}")).await;
    until_visible(&b, "the last line", last).await;
    b
}

/// Waits until line `n` is visible (`what` names it in the error).
async fn until_visible(b: &Browser, what: &str, n: usize) {
    until(what, || async move { visible(b, n).await.then_some(()) }).await;
}

async fn lines_in_dom(b: &Browser) -> u64 {
    let n = b
        .js("return document.querySelectorAll('#log .l').length")
        .await;
    n.as_u64().unwrap()
}

/// The number of the line at the top of the log's box, once it is rendered there.
async fn top_line(b: &Browser) -> Option<usize> {
    let v = b
        .js(
            "const r = document.getElementById('log').getBoundingClientRect(); \
             const el = document.elementFromPoint(r.left + 100, r.top + 12); \
             const l = el && el.closest('#log .l'); return l ? Number(l.id.slice(1)) : null;",
        )
        .await;
    v.as_u64().map(|n| usize::try_from(n).unwrap())
}

/// The id of the first shown line after line `n` in the DOM.
async fn shown_after(b: &Browser, n: usize) -> String {
    let script = format!(
        "const all = [...document.querySelectorAll('#log .l')]; \
         const i = all.findIndex(l => l.id === 'L{n}'); \
         const next = i < 0 ? null : all.slice(i + 1).find(l => !l.hidden); \
         return next ? next.id : '';"
    );
    b.js(&script).await.as_str().unwrap_or_default().to_string()
}

/// A job of a quarter of a million lines (coloured ones, wrapping ones, and a collapsed section of
/// fifty thousand in the middle) through a real agent.
#[test]
fn a_big_log_opens_at_its_tail_with_a_bounded_dom_and_jumps_to_lines() {
    let s = Setup::new(Store::Sqlite);
    // Every thirteenth line of the last part wraps: line heights differ from the estimate.
    let ci = "big:\n  script:\n    \
        - seq 1 100000 | sed -e 's/.*/row & plain text of the big log/' -e '0~3s/.*/\\x1b[32m&\\x1b[0m/'\n    \
        - printf 'section_start:1:big[collapsed=true]\\r\\033[0KBig section\\n'\n    \
        - seq 100001 150000 | sed -e 's/.*/row & inside the folded section/'\n    \
        - printf 'section_end:1:big\\r\\033[0K\\n'\n    \
        - seq 150001 250000 | sed -e 's/.*/row & after the section, \\x1b[1;31mred\\x1b[0m and plain/' -e '0~13s/$/LONG/'\n    \
        - echo the last line\n"
        .replace("LONG", &" and a line long enough to wrap".repeat(6));
    let (job, raw) = run(&s, "big", &ci);
    let lines: Vec<&str> = raw.strip_suffix('\n').unwrap_or(&raw).split('\n').collect();
    let number = |text: &str| 1 + lines.iter().position(|l| l.contains(text)).unwrap();
    let (early, header) = (number("row 5000 plain"), number("\u{1b}[0KBig section"));
    let end = 1 + lines
        .iter()
        .position(|l| l.starts_with("section_end:1:big"))
        .unwrap();
    let last = lines.len();
    assert!(last > 250_000, "{last}");

    runtime().block_on(async {
        // The tail, with a bounded DOM.
        let owned = at_tail(&s, job, last).await;
        let b = &owned;
        assert!(
            b.js("return document.getElementById('log').textContent")
                .await
                .as_str()
                .unwrap()
                .contains("the last line")
        );
        let held = lines_in_dom(b).await;
        assert!(0 < held && held < MAX_LINES, "{held} lines in the DOM");
        b.screenshot("big-log").await;

        // While chunks load, the log says it is busy (screen readers wait), and not after.
        b.js("window.__busy = 0; new MutationObserver(() => { \
              if (document.getElementById('log').getAttribute('aria-busy') === 'true') \
              window.__busy++; }).observe(document.getElementById('log'), \
              {attributes: true, attributeFilter: ['aria-busy']}); return null")
            .await;

        // Scrolled up a screen at a time, across chunks: the lines just above, without a jump.
        let mut above = top_line(b).await.unwrap();
        for _ in 0..80 {
            b.js("document.getElementById('log').scrollBy(0, -600); return null")
                .await;
            let now = until("lines at the top", || async move { top_line(b).await }).await;
            assert!(
                now < above && above - now < 60,
                "from line {above} to {now}"
            );
            above = now;
        }
        assert!(last - above > 2000, "{above}");
        assert!(b.js("return window.__busy").await.as_i64().unwrap() > 0);
        until("the log to be idle", || async move {
            (b.js("return document.getElementById('log').hasAttribute('aria-busy')").await
                == serde_json::json!(false))
            .then_some(())
        })
        .await;

        // Scrolled to the top: line 1.
        b.js("document.getElementById('log').scrollTop = 0; return null")
            .await;
        until_visible(b, "line 1 at the top", 1).await;
        let held = lines_in_dom(b).await;
        assert!(held < MAX_LINES, "{held} lines in the DOM");

        // Dragged to the middle: lines from there, loaded without the ones between.
        b.js("const x = document.getElementById('log'); x.scrollTop = x.scrollHeight / 2; return null")
            .await;
        let middle = until("lines in the middle", || async move { top_line(b).await }).await;
        assert!(last / 4 < middle && middle < last * 3 / 4, "{middle}");
        assert!(lines_in_dom(b).await < MAX_LINES);

        // A link to an early line shows it.
        b.open("/agents").await;
        b.open(&format!("/jobs/{job}#L{early}")).await;
        until_visible(b, "the early line", early).await;
        let text = b
            .js(&format!(
                "return document.getElementById('L{early}').textContent"
            ))
            .await;
        assert!(text.as_str().unwrap().contains("row 5000 plain"), "{text}");
        assert!(lines_in_dom(b).await < MAX_LINES);

        // The collapsed section, fifty thousand lines over many chunks, folds whole: after its
        // header comes the line after its end; its header unfolds it.
        assert!(lines[header + 1].starts_with("row 100001 inside"));
        b.open("/agents").await;
        b.open(&format!("/jobs/{job}#L{header}")).await;
        until("the line after the folded section", || async move {
            (shown_after(b, header).await == format!("L{}", end + 1)).then_some(())
        })
        .await;
        assert!(lines_in_dom(b).await < MAX_LINES);
        b.click("#log [data-s=big] .tog").await;
        until("the section unfolded", || async move {
            (shown_after(b, header).await == format!("L{}", header + 1)).then_some(())
        })
        .await;
        assert!(lines_in_dom(b).await < MAX_LINES);
    });
}

/// A line several chunks long: its pieces show under one number, and the lines after it keep
/// theirs as the page scrolls down to them.
#[test]
fn a_line_longer_than_a_chunk_keeps_the_numbers_after_it() {
    let s = Setup::new(Store::Sqlite);
    let ci = "long:\n  script:\n    \
        - echo first\n    \
        - printf 'long%0200000dend\\n' 0\n    \
        - echo after the long line\n    \
        - seq 1 2000 | sed -e 's/.*/tail row &/'\n";
    let (job, raw) = run(&s, "long", ci);
    let lines: Vec<&str> = raw.strip_suffix('\n').unwrap_or(&raw).split('\n').collect();
    let long = 1 + lines.iter().position(|l| l.starts_with("long0")).unwrap();
    let after = 1 + lines
        .iter()
        .position(|l| *l == "after the long line")
        .unwrap();
    assert!(after > long);
    let last = lines.len();

    runtime().block_on(async {
        let owned = at_tail(&s, job, last).await;
        let b = &owned;
        b.js("document.getElementById('log').scrollTop = 0; return null")
            .await;
        until_visible(b, "line 1 at the top", 1).await;
        // Down a screen at a time until the line after the long one is loaded; then to it.
        let held = format!("return !!document.getElementById('L{after}')");
        for _ in 0..400 {
            if b.js(&held).await == json!(true) {
                break;
            }
            b.js("document.getElementById('log').scrollBy(0, 600); return null")
                .await;
            until("lines in view", || async move { top_line(b).await }).await;
        }
        let state = b
            .js("const x = document.getElementById('log'); \
                 return [x.scrollTop, x.scrollHeight, [...x.querySelectorAll('[id]')].map(e => e.id).slice(0, 5)]")
            .await;
        assert_eq!(b.js(&held).await, json!(true), "{state}");
        b.js(&format!(
            "document.getElementById('L{after}').scrollIntoView(); return null"
        ))
        .await;
        until_visible(b, "the line after the long one", after).await;
        let text = b
            .js(&format!(
                "return document.getElementById('L{after}').textContent"
            ))
            .await;
        assert!(
            text.as_str().unwrap().contains("after the long line"),
            "{text}"
        );
        let unique = b
            .js(
                "const ids = [...document.querySelectorAll('#log [id]')].map(e => e.id); \
                 return new Set(ids).size === ids.length",
            )
            .await;
        assert_eq!(unique, json!(true));
        let pieces = b
            .js("return document.querySelectorAll('#log .l.c').length")
            .await;
        assert!(pieces.as_u64().unwrap() > 0, "{pieces}");
    });
}
