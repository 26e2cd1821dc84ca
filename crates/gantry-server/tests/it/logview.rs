//! The web UI's log chunks (`/jobs/{id}/log.html`): the tail, from a line, backward and forward,
//! each numbered as the whole log is.

use reqwest::Method;

use crate::both;
use crate::common::{ADMIN, App, Backend, spawn};

const CI: &str = "build:\n  script: [echo hi]\n";

/// The answer to `log.html?QUERY`.
async fn get(app: &App, id: i64, query: &str) -> reqwest::Response {
    app.request(Method::GET, &format!("/jobs/{id}/log.html?{query}"))
        .header("cookie", format!("gantry_session={ADMIN}"))
        .send()
        .await
        .unwrap()
}

/// A chunk: its HTML and its `X-From`, `X-Line`, `X-Next-From` and `X-Next-Line`.
async fn chunk(app: &App, id: i64, query: &str) -> (String, [u64; 4]) {
    let r = get(app, id, query).await;
    assert_eq!(r.status(), 200, "{query}");
    let h = |k: &str| -> u64 { r.headers()[k].to_str().unwrap().parse().unwrap() };
    let at = [h("x-from"), h("x-line"), h("x-next-from"), h("x-next-line")];
    (r.text().await.unwrap(), at)
}

/// A running job of a new project, taken by an agent: the app, the agent and the job's id.
async fn running(b: Backend) -> (App, crate::common::Agent, i64) {
    let app = spawn(b).await;
    app.commit(&[(".gitlab-ci.yml", CI)]);
    app.project("demo", serde_json::json!({})).await;
    let agent = app.register("a", &[]).await;
    let r = app
        .post("/api/v1/projects/demo/pipelines")
        .json(&serde_json::json!({"ref": "main"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202);
    let job = app.take(&agent, 5000).await.expect("a job");
    let id = job["job_id"].as_i64().unwrap();
    (app, agent, id)
}

/// Appends `text` to the job's log at `offset`.
async fn append(app: &App, agent: &crate::common::Agent, id: i64, offset: usize, text: &str) {
    let r = app
        .agent_call(
            agent,
            Method::PUT,
            &format!("/api/v1/agent/jobs/{id}/log?offset={offset}"),
        )
        .body(text.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// The text of a chunk's lines (tags dropped, entities left), each with its anchor's number or
/// `None` for the rest of a line begun in the chunk before.
fn lines(html: &str) -> Vec<(Option<u64>, String)> {
    html.split("<div class=\"l")
        .skip(1)
        .map(|div| {
            let n = div
                .split_once(" id=\"L")
                .filter(|(head, _)| !head.contains('>'))
                .map(|(_, rest)| rest[..rest.find('"').unwrap()].parse().unwrap());
            let body = &div[div.find("<span class=\"t\">").unwrap() + 16..];
            (n, body.trim_end_matches("</span></div>").to_string())
        })
        .collect()
}

async fn chunks_number_lines_as_the_whole_log(b: Backend) {
    let (app, agent, id) = running(b).await;
    // Lines of varied length, several chunks' worth; line N reads `line N`.
    let log: String = (1..=20_000)
        .map(|n| format!("line {n}{}\n", "x".repeat(n % 17)))
        .collect();
    let offset = |line: usize| -> u64 {
        let before: usize = log.split_inclusive('\n').take(line - 1).map(str::len).sum();
        before as u64
    };
    append(&app, &agent, id, 0, &log).await;

    // The tail: whole lines up to the end, numbered from the log's start.
    let (html, [from, line, next_from, next_line]) = chunk(&app, id, "").await;
    assert_eq!(next_from, log.len() as u64);
    assert_eq!(next_line, 20_001);
    assert!(line > 1 && from == offset(line as usize), "{from} {line}");
    assert!(
        html.starts_with(&format!("<div class=\"l\" id=\"L{line}\">")),
        "{}",
        &html[..80]
    );
    assert!(html.contains(&format!(">line {line}x")) || html.contains(&format!(">line {line}<")));
    assert!(html.contains("id=\"L20000\""));

    // Backward from the tail's start: the chunk that ends there.
    let (html, [from2, line2, next_from2, next_line2]) =
        chunk(&app, id, &format!("to={from}&line={line}")).await;
    assert_eq!((next_from2, next_line2), (from, line));
    assert!(
        line2 < line && from2 == offset(line2 as usize),
        "{from2} {line2}"
    );
    assert!(html.contains(&format!("id=\"L{}\"", line - 1)));
    assert!(!html.contains(&format!("id=\"L{line}\"")));

    // From a line: that line first; forward from where it ends, the next lines.
    let (html, [from3, line3, next_from3, next_line3]) = chunk(&app, id, "line=7000").await;
    assert_eq!((from3, line3), (offset(7000), 7000));
    assert!(html.starts_with("<div class=\"l\" id=\"L7000\">"));
    let (html, [from4, line4, ..]) =
        chunk(&app, id, &format!("from={next_from3}&line={next_line3}")).await;
    assert_eq!((from4, line4), (next_from3, next_line3));
    assert!(html.starts_with(&format!("<div class=\"l\" id=\"L{next_line3}\">")));
    assert_eq!(next_from3, offset(next_line3 as usize));
}
both!(chunks_number_lines_as_the_whole_log);

/// Joins the pieces of lines: each whole line's number and text, with the numbers checked to be
/// unique.
fn join(parts: &[(Option<u64>, String)]) -> Vec<(u64, String)> {
    let mut out: Vec<(u64, String)> = Vec::new();
    for (n, text) in parts {
        match n {
            Some(n) => {
                assert!(out.iter().all(|(m, _)| m != n), "L{n} twice");
                out.push((*n, text.clone()));
            }
            None => out
                .last_mut()
                .expect("a line to go on with")
                .1
                .push_str(text),
        }
    }
    out
}

async fn a_line_longer_than_a_chunk_keeps_the_numbers_after_it(b: Backend) {
    let (app, agent, id) = running(b).await;
    // A line of two-, three- and four-byte characters, several chunks long, between short ones.
    let long: String = "\u{e9}\u{20ac}\u{1f600}x".repeat(20_000);
    let log = format!("a\n{long}\nb\nc\n");
    append(&app, &agent, id, 0, &log).await;
    let want = vec![
        (1, "a".to_string()),
        (2, long.clone()),
        (3, "b".to_string()),
        (4, "c".to_string()),
    ];

    // Forward from the start to the end: each chunk starts where the one before ends.
    let (mut at, mut line, mut parts) = (0, 1, Vec::new());
    while at < log.len() as u64 {
        let (html, [from, l, next_from, next_line]) =
            chunk(&app, id, &format!("from={at}&line={line}")).await;
        assert_eq!((from, l), (at, line));
        assert!(next_from > at, "{at}");
        parts.extend(lines(&html));
        (at, line) = (next_from, next_line);
    }
    assert_eq!(line, 5);
    assert_eq!(join(&parts), want);

    // Backward from the tail to the start: the same lines, numbered the same.
    let (html, [mut at, mut line, next_from, next_line]) = chunk(&app, id, "").await;
    assert_eq!((next_from, next_line), (log.len() as u64, 5));
    let mut parts = lines(&html);
    while at > 0 {
        let (html, [from, l, next_from, next_line]) =
            chunk(&app, id, &format!("to={at}&line={line}")).await;
        assert_eq!((next_from, next_line), (at, line));
        assert!(from < at);
        let mut before = lines(&html);
        before.extend(parts);
        parts = before;
        (at, line) = (from, l);
    }
    assert_eq!(line, 1);
    assert_eq!(join(&parts), want);
}
both!(a_line_longer_than_a_chunk_keeps_the_numbers_after_it);

async fn an_unfinished_last_line_waits_for_its_end(b: Backend) {
    let (app, agent, id) = running(b).await;
    // The last chunk of a running job's log holds no newline.
    let log = format!("a\n{}", "y".repeat(70_000));
    append(&app, &agent, id, 0, &log).await;
    let (html, [_, _, next_from, next_line]) = chunk(&app, id, "").await;
    // The unfinished line is not shown as a whole one: the chunk stops before it.
    assert_eq!(next_line, 2, "{html:.200}");
    assert!(
        !html.contains("id=\"L2\"") && !html.contains("yyy"),
        "{html:.200}"
    );
    // The line ends: the next pull shows it as line 2 (going on from where the chunk stopped),
    // and line 3 after it.
    append(&app, &agent, id, log.len(), "yy\nz\n").await;
    let (mut at, mut line, mut html) = (next_from, next_line, String::new());
    while at < log.len() as u64 + 5 {
        let (more, [.., next_from, next_line]) =
            chunk(&app, id, &format!("from={at}&line={line}")).await;
        assert!(next_from > at);
        html.push_str(&more);
        (at, line) = (next_from, next_line);
    }
    assert_eq!(line, 4);
    assert_eq!(html.matches("id=\"L2\"").count(), 0, "{html:.200}");
    assert!(
        html.contains("id=\"L3\"><a class=\"n\" href=\"#L3\">3</a><span class=\"t\">z<"),
        "{html:.200}"
    );
    assert!(!html.contains("id=\"L4\""));
}
both!(an_unfinished_last_line_waits_for_its_end);

async fn hostile_positions_answer_cleanly(b: Backend) {
    let (app, agent, id) = running(b).await;
    append(&app, &agent, id, 0, "one\ntwo\n").await;
    let (html, [from, line, next_from, next_line]) =
        chunk(&app, id, "from=0&line=18446744073709551615").await;
    let max = u64::from(u32::MAX);
    assert_eq!((from, line, next_from, next_line), (0, max, 8, max + 2));
    assert!(html.contains(&format!("id=\"L{max}\"")));
    let (_, [.., line, _, _]) = chunk(&app, id, "from=0&line=0").await;
    assert_eq!(line, 1);
    for q in [
        "from=9223372036854775807&line=1",
        "from=-9223372036854775808&line=1",
        "to=9223372036854775807&line=18446744073709551615",
        "to=-9223372036854775808&line=0",
        "to=-1",
        "line=18446744073709551615",
        "line=0",
    ] {
        let (html, [from, _, next_from, _]) = chunk(&app, id, q).await;
        assert!(
            from <= next_from && next_from <= 8,
            "{q}: {from} {next_from}"
        );
        assert!(html.len() < 1000, "{q}");
    }
    for q in ["from=99999999999999999999", "line=-1", "to=x"] {
        assert_eq!(get(&app, id, q).await.status(), 400, "{q}");
    }
}
both!(hostile_positions_answer_cleanly);
