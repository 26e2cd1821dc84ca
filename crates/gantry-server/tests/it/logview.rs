//! The web UI's log chunks (`/jobs/{id}/log.html`): the tail, from a line, backward and forward,
//! each numbered as the whole log is.

use reqwest::Method;

use crate::both;
use crate::common::{ADMIN, App, Backend, spawn};

const CI: &str = "build:\n  script: [echo hi]\n";

/// A chunk: its HTML and its `X-From`, `X-Line`, `X-Next-From` and `X-Next-Line`.
async fn chunk(app: &App, id: i64, query: &str) -> (String, [u64; 4]) {
    let r = app
        .request(Method::GET, &format!("/jobs/{id}/log.html?{query}"))
        .header("cookie", format!("gantry_session={ADMIN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{query}");
    let h = |k: &str| -> u64 { r.headers()[k].to_str().unwrap().parse().unwrap() };
    let at = [h("x-from"), h("x-line"), h("x-next-from"), h("x-next-line")];
    (r.text().await.unwrap(), at)
}

async fn chunks_number_lines_as_the_whole_log(b: Backend) {
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
    // Lines of varied length, several chunks' worth; line N reads `line N`.
    let log: String = (1..=20_000)
        .map(|n| format!("line {n}{}\n", "x".repeat(n % 17)))
        .collect();
    let offset = |line: usize| -> u64 {
        let before: usize = log.split_inclusive('\n').take(line - 1).map(str::len).sum();
        before as u64
    };
    let r = app
        .agent_call(
            &agent,
            Method::PUT,
            &format!("/api/v1/agent/jobs/{id}/log?offset=0"),
        )
        .body(log.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

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
