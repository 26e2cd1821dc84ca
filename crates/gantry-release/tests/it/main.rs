//! Verifications against real things on 127.0.0.1: a tiny application whose traffic the test
//! controls (a request counter by code and a latency histogram, per track, and a `/healthz`), and
//! Debian's `prometheus` scraping it every second.

mod checks;
mod metrics;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gantry_release::{Measurement, Outcome, Verifier, Verify};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// Upper bounds of the latency histogram's buckets, in seconds.
const BUCKETS: [f64; 5] = [0.1, 0.5, 1.0, 2.5, 5.0];

/// The traffic of one track: what a load generator sends every 50 ms.
#[derive(Clone, Copy)]
pub struct Load {
    /// The share of requests answered 500.
    pub errors: f64,
    /// How long each request takes, in seconds.
    pub latency: f64,
}

/// No errors, 50 ms a request.
pub const HEALTHY: Load = Load {
    errors: 0.0,
    latency: 0.05,
};

#[derive(Default)]
struct Track {
    ok: u64,
    failed: u64,
    buckets: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
    load: Option<Load>,
}

#[derive(Default)]
struct State {
    tracks: BTreeMap<String, Track>,
    health: u16,
    health_asked: u64,
}

/// The application: `/metrics`, `/healthz` (answering the status the test sets), `/slow` (never
/// answering in time).
#[derive(Clone)]
pub struct App {
    /// Where it listens.
    pub addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl App {
    /// Serves on a free port, with tracks `tracks` under `load`, `/healthz` answering 200.
    pub async fn start(tracks: &[&str], load: Load) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut state = State {
            health: 200,
            ..State::default()
        };
        for t in tracks {
            let track = Track {
                load: Some(load),
                ..Track::default()
            };
            state.tracks.insert((*t).to_string(), track);
        }
        let app = App {
            addr: listener.local_addr().unwrap(),
            state: Arc::new(Mutex::new(state)),
        };
        let served = app.clone();
        tokio::spawn(async move {
            loop {
                let (mut conn, _) = listener.accept().await.unwrap();
                let app = served.clone();
                tokio::spawn(async move {
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match conn.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&head).into_owned();
                    let path = line.split(' ').nth(1).unwrap_or_default().to_string();
                    let (status, body) = match path.as_str() {
                        "/metrics" => (200, app.metrics()),
                        "/healthz" => {
                            let mut s = app.state.lock().unwrap();
                            s.health_asked += 1;
                            (s.health, String::new())
                        }
                        "/slow" => {
                            tokio::time::sleep(Duration::from_secs(30)).await;
                            (200, String::new())
                        }
                        _ => (404, String::new()),
                    };
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = conn.write_all(answer.as_bytes()).await;
                });
            }
        });
        let generator = app.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                generator.generate();
            }
        });
        app
    }

    /// 20 requests per track, as its load says.
    fn generate(&self) {
        let mut s = self.state.lock().unwrap();
        for t in s.tracks.values_mut() {
            let Some(load) = t.load else { continue };
            let failed = (20.0 * load.errors).round() as u64;
            t.failed += failed;
            t.ok += 20 - failed;
            for (i, le) in BUCKETS.iter().enumerate() {
                if load.latency <= *le {
                    t.buckets[i] += 20;
                }
            }
            t.count += 20;
            t.sum += 20.0 * load.latency;
        }
    }

    /// Changes the load of `track` from now on.
    pub fn set_load(&self, track: &str, load: Load) {
        let mut s = self.state.lock().unwrap();
        s.tracks.get_mut(track).unwrap().load = Some(load);
    }

    /// Makes `/healthz` answer `status`.
    pub fn set_health(&self, status: u16) {
        self.state.lock().unwrap().health = status;
    }

    /// How many times `/healthz` was asked.
    pub fn health_asked(&self) -> u64 {
        self.state.lock().unwrap().health_asked
    }

    /// The URL of `path` on the application.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The Prometheus text format of every track.
    fn metrics(&self) -> String {
        use std::fmt::Write;
        let s = self.state.lock().unwrap();
        let mut out = String::from("# TYPE http_requests_total counter\n");
        for (name, t) in &s.tracks {
            for (code, n) in [("200", t.ok), ("500", t.failed)] {
                let _ = writeln!(
                    out,
                    "http_requests_total{{track=\"{name}\",code=\"{code}\"}} {n}"
                );
            }
        }
        out.push_str("# TYPE http_request_duration_seconds histogram\n");
        for (name, t) in &s.tracks {
            for (le, n) in BUCKETS.iter().zip(t.buckets) {
                let _ = writeln!(
                    out,
                    "http_request_duration_seconds_bucket{{track=\"{name}\",le=\"{le}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "http_request_duration_seconds_bucket{{track=\"{name}\",le=\"+Inf\"}} {}",
                t.count
            );
            let _ = writeln!(
                out,
                "http_request_duration_seconds_sum{{track=\"{name}\"}} {}",
                t.sum
            );
            let _ = writeln!(
                out,
                "http_request_duration_seconds_count{{track=\"{name}\"}} {}",
                t.count
            );
        }
        out
    }
}

/// A free port on 127.0.0.1 (nothing listens on it once this returns).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Debian's `prometheus` on 127.0.0.1, scraping `target` every second; killed when dropped.
pub struct Prometheus {
    child: Child,
    /// Its base URL.
    pub address: String,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts it and waits until it holds a few samples of `target`'s counter.
    pub async fn start(target: SocketAddr) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
                 scrape_configs:\n  - job_name: app\n    static_configs: [{{targets: ['{target}']}}]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("prometheus (Debian's package `prometheus`) is installed");
        let p = Prometheus {
            child,
            address: format!("http://127.0.0.1:{port}"),
            dir,
        };
        let client = gantry_release::prometheus::Client::new(
            reqwest::Client::new(),
            &p.address,
            Duration::from_secs(2),
        );
        for _ in 0..300 {
            let samples = client
                .instant("min(count_over_time(http_requests_total[1m]))")
                .await;
            if samples.is_ok_and(|v| v.first().is_some_and(|n| *n >= 3.0)) {
                return p;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let log = std::fs::read_to_string(p.dir.path().join("log")).unwrap_or_default();
        panic!("prometheus did not scrape the application in 30 s:\n{log}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs `spec` once with a fresh verifier; answers the outcome and the measurements reported.
pub async fn verify(spec: &Verify) -> (Outcome, Vec<Measurement>) {
    let verifier = Verifier::new(reqwest::Client::new());
    let (_cancel, cancel) = tokio::sync::watch::channel(false);
    let mut reported = Vec::new();
    let outcome = verifier
        .verify(spec, |m| reported.push(m.clone()), cancel)
        .await;
    (outcome, reported)
}
