//! The web UI in a real browser: Debian's headless Chromium driven through chromedriver
//! (`webdriver.rs`), against a real server whose history real pipelines made on a real agent.
//! `scripts/need.sh` installs `chromium` and `chromium-driver` (scripts/test does it first).
//! With `GANTRY_UI_SCREENSHOTS=DIR`, the main pages are saved there as PNG files.
//!
//! Waits poll with deadlines; no sleep decides an outcome.

use std::future::Future;
use std::time::{Duration, Instant};

use gantry_api::{JobStatus, PipelineStatus};
use serde_json::{Value, json};

use crate::server::{ADMIN, Setup, Store, job_named, wait_for, wait_lines};
use crate::webdriver::{Client, Driver, Key, Locator};

const DEADLINE: Duration = Duration::from_secs(45);

/// A commit title that would run script if the UI let it.
const XSS_TITLE: &str =
    "<script>window.__xss=3</script><img src=x onerror=\"window.__xss=4\">Ship it";
/// A log line that would run script if the UI let it.
const XSS_LINE: &str = "<img src=x onerror=\"window.__xss=1\"><script>window.__xss=2</script>";

/// chromedriver and the browser session it drives.
pub(crate) struct Browser {
    _driver: Driver,
    client: Client,
    base: String,
}

pub(crate) async fn browser(server_url: &str) -> Browser {
    let driver = Driver::start();
    let mut options = json!({
        "args": [
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run",
            "--window-size=1280,720", "--disable-crash-reporter",
        ]
    });
    if std::path::Path::new("/usr/bin/chromium").exists() {
        options["binary"] = json!("/usr/bin/chromium");
    }
    let mut caps = serde_json::Map::new();
    caps.insert("goog:chromeOptions".into(), options);
    Browser {
        client: driver.session(caps, DEADLINE).await,
        _driver: driver,
        base: server_url.trim_end_matches('/').to_string(),
    }
}

/// Polls `f` until it gives a value, or fails with `what` after [`DEADLINE`].
pub(crate) async fn until<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let end = Instant::now() + DEADLINE;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Browser {
    pub(crate) async fn open(&self, path: &str) {
        self.client
            .goto(&format!("{}{path}", self.base))
            .await
            .unwrap_or_else(|e| panic!("open {path}: {e}"));
    }

    pub(crate) async fn click(&self, css: &str) {
        self.client
            .find(Locator::Css(css))
            .await
            .unwrap_or_else(|e| panic!("no `{css}`: {e}"))
            .click()
            .await
            .unwrap();
    }

    pub(crate) async fn text(&self, css: &str) -> String {
        match self.client.find(Locator::Css(css)).await {
            Ok(e) => e.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        }
    }

    pub(crate) async fn count(&self, css: &str) -> usize {
        self.client
            .find_all(Locator::Css(css))
            .await
            .map_or(0, |v| v.len())
    }

    pub(crate) async fn js(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap()
    }

    /// The status code of a `POST` of `body` (a form) to `path`, made by the page's own script.
    async fn forge_post(&self, path: &str, body: &str) -> i64 {
        let script = "const [path, body, done] = arguments; \
             fetch(path, {method: 'POST', body, credentials: 'same-origin', redirect: 'manual', \
               headers: {'Content-Type': 'application/x-www-form-urlencoded'}}) \
             .then(r => done(r.status), e => done(String(e)));";
        let v = self
            .client
            .execute_async(script, vec![json!(path), json!(body)])
            .await
            .unwrap();
        v.as_i64().unwrap_or_else(|| panic!("the POST failed: {v}"))
    }

    async fn sign_in(&self, token: &str) {
        self.open("/signin").await;
        let field = self.client.find(Locator::Css("#token")).await.unwrap();
        field.send_keys(token).await.unwrap();
        self.click("form.signin button").await;
    }

    /// Reloads until `css`'s text is `want`.
    async fn reload_until(&self, path: &str, css: &str, want: &str) {
        until(
            &format!("`{css}` to read `{want}` on {path}"),
            || async move {
                self.open(path).await;
                (self.text(css).await == want).then_some(())
            },
        )
        .await;
    }

    async fn assert_no_script_ran(&self) {
        assert_eq!(
            self.js("return window.__xss === undefined").await,
            json!(true)
        );
    }

    /// Saves the page as `$GANTRY_UI_SCREENSHOTS/NAME.png` (`NAME` may name a folder).
    pub(crate) async fn screenshot(&self, name: &str) {
        if let Ok(dir) = std::env::var("GANTRY_UI_SCREENSHOTS") {
            let path = std::path::Path::new(&dir).join(format!("{name}.png"));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            let png = self.client.screenshot().await.unwrap();
            std::fs::write(path, png).unwrap();
        }
    }
}

pub(crate) fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Sign in (a wrong token refused), the projects and pipelines, the graph's jobs and `needs`
/// edges, a log, playing a manual job, CSRF, and a read-only token: no buttons, its forged `POST`
/// refused. An XSS payload in the commit title and in a log line stays text.
#[test]
fn signs_in_draws_the_graph_plays_and_keeps_xss_inert() {
    let s = Setup::new(Store::Sqlite);
    let (_, release, ci) = s.runs_and_release(&format!(
        "build:\n  stage: build\n  script:\n    - printf '%s\\n' '{XSS_LINE}'\n    \
         - printf 'section_start:1:notes[collapsed=true]\\r\\033[0KRelease notes\\nfolded line\\nsection_end:1:notes\\r\\033[0K\\n'\n\
         test:\n  stage: test\n  needs: [build]\n  script: [echo tested]\n\
         lint:\n  stage: test\n  script: [echo linted]\n\
         deploy:\n  stage: deploy\n  needs: [test, lint]\n  when: manual\n  script:\n    \
         - echo started >> {{runs}}\n    - while [ ! -f {{release}} ]; do sleep 0.1; done\n"
    ));
    let (repo, api) = s.project("web", &ci);
    repo.git(&["commit", "-q", "--amend", "-m", XSS_TITLE]);
    let _agent = s.agent("a1");
    let id = api.trigger("web");
    let p = wait_for("the jobs before the manual one to end", || {
        let p = api.pipeline(id);
        let done = ["build", "test", "lint"]
            .iter()
            .all(|n| p.jobs.iter().any(|j| j.name == *n && j.status.is_final()));
        done.then_some(p)
    });
    for n in ["build", "test", "lint"] {
        assert_eq!(job_named(&p, n).status, JobStatus::Success, "{p:#?}");
    }
    let (build, deploy) = (job_named(&p, "build").id, job_named(&p, "deploy").id);
    let (status, body) = api.post(
        "/api/v1/projects/web/tokens",
        &json!({"name": "viewer", "read_only": true}),
    );
    assert_eq!(status, 201, "{body}");
    let viewer = body["token"].as_str().unwrap().to_string();
    let viewer_id = body["id"].as_i64().unwrap();

    let rt = runtime();
    let owned = rt.block_on(browser(&s.server.url));
    rt.block_on(async {
        let b = &owned;

        // A wrong token is refused; the admin token signs in.
        b.sign_in("gpt_not-a-token").await;
        assert!(
            b.text(".error").await.contains("not known"),
            "{}",
            b.client.source().await.unwrap()
        );
        assert_eq!(b.client.current_url().await.unwrap().path(), "/signin");
        b.open("/").await;
        assert_eq!(b.client.current_url().await.unwrap().path(), "/signin");
        b.sign_in_to_projects(ADMIN).await;
        b.screenshot("projects").await;

        // The project's pipelines: the title shown as text.
        b.click("a[href='/projects/web']").await;
        until("the pipelines page", || async move {
            (b.text("h1").await == "web").then_some(())
        })
        .await;
        let row_title = b.text("table.pipelines .title").await;
        assert_eq!(row_title, XSS_TITLE);
        b.assert_no_script_ran().await;
        b.screenshot("pipelines").await;

        // The pipeline: stages as columns, `needs` as edges.
        b.click(&format!("table.pipelines a[href='/pipelines/{id}']"))
            .await;
        until("the pipeline page", || async move {
            b.text("h1")
                .await
                .starts_with(&format!("Pipeline #{id}"))
                .then_some(())
        })
        .await;
        let mut jobs: Vec<String> = Vec::new();
        for e in b.client.find_all(Locator::Css("[data-job]")).await.unwrap() {
            jobs.push(e.attr("data-job").await.unwrap().unwrap());
        }
        jobs.sort();
        assert_eq!(jobs, ["build", "deploy", "lint", "test"]);
        let mut edges = Vec::new();
        for e in b
            .client
            .find_all(Locator::Css("svg.edges path"))
            .await
            .unwrap()
        {
            edges.push((
                e.attr("data-from").await.unwrap().unwrap(),
                e.attr("data-to").await.unwrap().unwrap(),
            ));
        }
        edges.sort();
        assert_eq!(
            edges,
            [
                ("build".to_string(), "test".to_string()),
                ("lint".to_string(), "deploy".to_string()),
                ("test".to_string(), "deploy".to_string()),
            ]
        );
        let stages: Vec<String> = {
            let mut v = Vec::new();
            for e in b.client.find_all(Locator::Css("h2.stage")).await.unwrap() {
                v.push(e.text().await.unwrap());
            }
            v
        };
        assert_eq!(stages, ["build", "test", "deploy"]);
        assert_eq!(b.text("[data-job=deploy] .stext").await, "manual");
        assert_eq!(b.text(".facts .title").await, XSS_TITLE);
        b.assert_no_script_ran().await;
        // A 1280×720 window holds the page without sideways scrolling.
        assert_eq!(
            b.js("return document.documentElement.scrollWidth <= window.innerWidth")
                .await,
            json!(true)
        );
        b.screenshot("pipeline").await;

        // The log: the payload is text, nothing ran.
        b.open(&format!("/jobs/{build}")).await;
        until("the log's payload line", || async move {
            let log = b.text("#log").await;
            (log.contains(XSS_LINE) && log.contains("Release notes")).then_some(())
        })
        .await;
        assert_eq!(b.count("#log script, #log img").await, 0);
        assert!(b.count("#log a[href='#L1']").await == 1);
        b.assert_no_script_ran().await;
        b.screenshot("job").await;

        // A POST without the session's CSRF token changes nothing.
        assert_eq!(
            b.forge_post(&format!("/jobs/{deploy}/play"), "csrf=forged")
                .await,
            403
        );
        assert_eq!(b.forge_post(&format!("/jobs/{deploy}/play"), "").await, 403);

        // A section folded as its marker asks, unfolded by its header.
        let folded = "return getComputedStyle([...document.querySelectorAll('#log .l')]\
             .find(l => l.querySelector('.t').textContent === 'folded line')).display === 'none'";
        assert_eq!(b.js(folded).await, json!(true));
        let tog = b
            .client
            .find(Locator::Css("#log [data-s=notes] .tog"))
            .await
            .unwrap();
        assert_eq!(
            tog.attr("aria-expanded").await.unwrap().as_deref(),
            Some("false")
        );
        assert!(tog.text().await.unwrap().contains("Release notes"));
        // By keyboard: the header is a button.
        tog.send_keys(&Key::Enter.to_string()).await.unwrap();
        assert_eq!(b.js(folded).await, json!(false));

        // The other pages.
        b.open("/agents").await;
        assert!(b.text("main table").await.contains("a1"));
        b.open("/projects/web/deliveries").await;
        assert!(b.text("main table").await.contains(&format!("#{id}")));
        b.open(&format!("/pipelines/{id}/reports")).await;
        assert_eq!(b.text("h2#tests").await, "Tests");

        // Play the manual job; the page follows it without a reload.
        b.open(&format!("/pipelines/{id}")).await;
        b.click("button[aria-label='Play deploy']").await;
        until("the pipeline page again", || async move {
            (b.text("[data-job=deploy] .stext").await == "running").then_some(())
        })
        .await;
        b.js("window.__same_page = true; return null").await;
        std::fs::write(&release, "go").unwrap();
        until("the played job's success, live", || async move {
            (b.text("[data-job=deploy] .stext").await == "success").then_some(())
        })
        .await;
        assert_eq!(
            b.js("return window.__same_page === true").await,
            json!(true)
        );

        // A read-only token: no buttons, and its forged POST (with a valid CSRF token) refused.
        b.sign_out().await;
        b.sign_in_to_projects(&viewer).await;
        b.open(&format!("/pipelines/{id}")).await;
        assert!(b.text(".who").await.contains("read only"));
        assert_eq!(
            b.count("form[action$='/cancel'], form[action$='/retry'], form[action$='/play']")
                .await,
            0
        );
        let csrf = b.csrf().await;
        assert_eq!(
            b.forge_post(&format!("/jobs/{build}/retry"), &format!("csrf={csrf}"))
                .await,
            403
        );
    });
    // Revoking the token ends its session at once.
    let r = reqwest::blocking::Client::new()
        .delete(format!(
            "{}/api/v1/projects/web/tokens/{viewer_id}",
            s.server.url.trim_end_matches('/')
        ))
        .bearer_auth(ADMIN)
        .send()
        .unwrap();
    assert!(r.status().is_success(), "{}", r.status());
    rt.block_on(async {
        owned.open(&format!("/pipelines/{id}")).await;
        assert_eq!(owned.client.current_url().await.unwrap().path(), "/signin");
        owned.client.clone().close().await.unwrap();
    });
    let p = api.pipeline(id);
    assert_eq!(job_named(&p, "build").attempt, 1, "{p:#?}");
    assert_eq!(job_named(&p, "deploy").status, JobStatus::Success, "{p:#?}");
}

/// A running job's log grows on the page without a reload; cancel stops the pipeline.
#[test]
fn follows_a_running_log_live_and_cancels() {
    let s = Setup::new(Store::Sqlite);
    let (runs, release, ci) = s.runs_and_release(
        "slow:\n  script:\n    - echo first line\n    - echo started >> {runs}\n    \
         - while [ ! -f {release} ]; do sleep 0.1; done\n    - echo second line\n    - sleep 60\n",
    );
    let (_repo, api) = s.project("live", &ci);
    let _agent = s.agent("a1");
    let id = api.trigger("live");
    wait_lines(&runs, 1, "the job to start");
    let slow = job_named(&api.pipeline(id), "slow").id;

    runtime().block_on(async {
        let owned = browser(&s.server.url).await;
        let b = &owned;
        b.sign_in_to_projects(ADMIN).await;
        b.open(&format!("/jobs/{slow}")).await;
        until("the first line", || async move {
            b.text("#log").await.contains("first line").then_some(())
        })
        .await;
        assert!(!b.text("#log").await.contains("second line"));
        // A mark that a reload would lose.
        b.js("window.__same_page = true; return null").await;
        std::fs::write(&release, "go").unwrap();
        until("the second line, live", || async move {
            b.text("#log").await.contains("second line").then_some(())
        })
        .await;
        assert_eq!(
            b.js("return window.__same_page === true").await,
            json!(true)
        );
        b.screenshot("live-log").await;

        // While it runs, the pipeline list asks the script to refresh it.
        b.open("/projects/live").await;
        assert_eq!(b.text("table.pipelines .stext").await, "running");
        assert_eq!(b.count("main[data-live]").await, 1);

        b.open(&format!("/pipelines/{id}")).await;
        // The form's POST and its redirect load a new page: wait for it, so that no navigation
        // of ours aborts the POST.
        b.js("window.__before_cancel = true; return null").await;
        b.click("button[aria-label='Cancel pipeline']").await;
        until("the cancel's answer", || async move {
            (b.js("return window.__before_cancel === undefined").await == json!(true)).then_some(())
        })
        .await;
        b.reload_until(&format!("/pipelines/{id}"), "h1 .stext", "canceled")
            .await;
        b.open("/projects/live").await;
        assert_eq!(b.text("table.pipelines .stext").await, "canceled");
        assert_eq!(b.count("main[data-live]").await, 0);
        owned.client.clone().close().await.unwrap();
    });
    assert_eq!(api.pipeline(id).status, PipelineStatus::Canceled);
}

impl Browser {
    /// Signs in with `token` and waits for the projects page.
    pub(crate) async fn sign_in_to_projects(&self, token: &str) {
        self.sign_in(token).await;
        until("the projects page", || async move {
            (self.text("h1").await == "Projects").then_some(())
        })
        .await;
    }

    /// Signs out and waits for the sign-in page.
    async fn sign_out(&self) {
        self.click("form[action='/signout'] button").await;
        until("the sign-in page", || async move {
            (self.client.current_url().await.ok()?.path() == "/signin").then_some(())
        })
        .await;
    }

    /// The session's CSRF token, as the page's forms carry it.
    async fn csrf(&self) -> String {
        self.client
            .find(Locator::Css("form[action='/signout'] input[name=csrf]"))
            .await
            .unwrap()
            .attr("value")
            .await
            .unwrap()
            .unwrap()
    }
}

/// Issue 20's test 6: an environment's history from real deployments (their verification's
/// measurements drawn), a rollback of it (asked, confirmed, then followed live until it succeeds
/// and the deployment it replaced reads `rolled_back`), a refused rollback shown on the page, and
/// a read-only token offered no Rollback button.
#[test]
fn rolls_back_an_environment_and_shows_the_history_change() {
    let s = Setup::new(Store::Sqlite);
    let health = crate::server::HttpStub::serve(vec![("/healthz", String::new())]);
    // The rollback waits for `release`, so that the page can be seen following it.
    let (runs, release, ci) = s.runs_and_release(&format!(
        "deploy:\n  environment: {{name: review/app}}\n  script:\n    - echo deployed\n    \
         - if [ \"$GANTRY_ROLLBACK\" = true ]; then echo started >> {{runs}}; \
         while [ ! -f {{release}} ]; do sleep 0.1; done; fi\n  verify:\n    interval: 0.1s\n    \
         duration: 0.1s\n    http:\n      - url: http://127.0.0.1:{}/healthz\n",
        health.port
    ));
    let (_repo, api) = s.project("shop", &ci);
    let _agent = s.agent("a1");
    let first = api.trigger("shop");
    assert_eq!(api.finished(first).status, PipelineStatus::Success);
    let second = crate::server::retrigger(&api, "shop", first);
    assert_eq!(api.finished(second).status, PipelineStatus::Success);
    let history = api.get_json("/api/v1/projects/shop/environments/review%2Fapp/deployments");
    let (newer, older) = (
        history[0]["id"].as_i64().unwrap(),
        history[1]["id"].as_i64().unwrap(),
    );
    assert_eq!(history[1]["pipeline_id"], first, "{history}");
    let (status, body) = api.post(
        "/api/v1/projects/shop/tokens",
        &json!({"name": "viewer", "read_only": true}),
    );
    assert_eq!(status, 201, "{body}");
    let viewer = body["token"].as_str().unwrap().to_string();
    let page = "/projects/shop/environments/review%2Fapp";

    runtime().block_on(async {
        let owned = browser(&s.server.url).await;
        let b = &owned;
        b.sign_in_to_projects(ADMIN).await;

        // The project's environments: each with its current version, linked to its pipeline.
        b.open("/projects/shop").await;
        b.click("nav.sub a[href='/projects/shop/environments']")
            .await;
        until("the environments page", || async move {
            (b.text("h1").await == "Environments of shop").then_some(())
        })
        .await;
        assert_eq!(
            b.count(&format!(
                "table.environments a.version[href='/pipelines/{second}']"
            ))
            .await,
            1
        );
        assert_eq!(b.text("table.environments .stext").await, "success");
        b.screenshot("environments").await;

        // The history: both deployments, their checks drawn, Rollback on the older one only.
        b.click(&format!("table.environments a[href='{page}']"))
            .await;
        until("the environment page", || async move {
            (b.text("h1").await == "Environment review/app").then_some(())
        })
        .await;
        assert_eq!(b.count("section.deployment").await, 2);
        let sec = |id: i64| format!("section[data-deployment='{id}']");
        assert_eq!(
            b.text(&format!("{} h2 .stext", sec(newer))).await,
            "success"
        );
        assert_eq!(
            b.text(&format!("{} h2 .stext", sec(older))).await,
            "success"
        );
        assert!(b.count(&format!("{} figure.chart svg", sec(older))).await >= 1);
        assert!(
            b.text(&format!("{} figure.chart ol", sec(older)))
                .await
                .contains("passed")
        );
        assert_eq!(b.count("button[aria-label^='Roll back to']").await, 1);
        b.screenshot("environment").await;

        // Rollback asks first, then re-deploys: a new deployment, running, marked as a rollback.
        b.click(&format!("button[aria-label='Roll back to #{older}']"))
            .await;
        until("the confirmation", || async move {
            (b.text("h1").await == "Roll back review/app?").then_some(())
        })
        .await;
        b.click("form.confirm button").await;
        until("the environment page again", || async move {
            (b.client.current_url().await.ok()?.path() == page).then_some(())
        })
        .await;
        until("the rollback on the environment page", || async move {
            (b.text("section.deployment .rollback-of").await == format!("rollback of #{newer}"))
                .then_some(())
        })
        .await;
        assert_eq!(b.count("section.deployment").await, 3);
        assert_eq!(b.text("section.deployment h2 .stext").await, "running");
        assert_eq!(b.count("main[data-live]").await, 1);
        wait_lines(&runs, 1, "the rollback to start");
        b.js("window.__same_page = true; return null").await;
        std::fs::write(&release, "go").unwrap();
        until("the rollback's success, live", || async move {
            (b.text("section.deployment h2 .stext").await == "success").then_some(())
        })
        .await;
        assert_eq!(
            b.js("return window.__same_page === true").await,
            json!(true)
        );
        b.reload_until(page, &format!("{} h2 .stext", sec(newer)), "rolled_back")
            .await;
        let rollback: i64 = b
            .client
            .find(Locator::Css("section.deployment"))
            .await
            .unwrap()
            .attr("data-deployment")
            .await
            .unwrap()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            b.text(&format!("{} .rolled-back-by", sec(newer))).await,
            format!("rolled back by #{rollback}")
        );
        b.screenshot("rolled-back").await;

        // A refused rollback is shown on the page, with the API's status.
        let csrf = b.csrf().await;
        let script = "const [path, body, done] = arguments; \
             fetch(path, {method: 'POST', body, credentials: 'same-origin', \
               headers: {'Content-Type': 'application/x-www-form-urlencoded'}}) \
             .then(r => r.text().then(t => done([r.status, t])), e => done(String(e)));";
        let v = b
            .client
            .execute_async(
                script,
                vec![
                    json!(format!("{page}/rollback")),
                    json!(format!("csrf={csrf}&to=999999")),
                ],
            )
            .await
            .unwrap();
        assert_eq!(v[0], 409, "{v}");
        assert!(
            v[1].as_str().unwrap().contains(
                "The rollback was refused: deployment 999999 is not a successful deployment"
            ),
            "{v}"
        );

        // A read-only token sees the history and no Rollback button, and cannot ask for one.
        b.sign_out().await;
        b.sign_in_to_projects(&viewer).await;
        b.open(page).await;
        assert_eq!(b.count("section.deployment").await, 3);
        assert_eq!(b.count("form[action$='/rollback']").await, 0);
        b.open(&format!("{page}/rollback?to={older}")).await;
        assert_eq!(b.text("h1").await, "Error 403");
        owned.client.clone().close().await.unwrap();
    });
    let history = api.get_json("/api/v1/projects/shop/environments/review%2Fapp/deployments");
    assert_eq!(history[0]["rollback_of"], newer, "{history}");
    assert_eq!(history[1]["status"], "rolled_back", "{history}");
}
