//! A TCP proxy between an agent and the server that holds back the answer bringing a job to a long
//! poll, so a test can decide what the agent does in the meantime.
//!
//! It forwards bytes both ways on each connection and looks only at the starts of reads: a read
//! from the agent that starts a long poll (`POST /api/v1/agent/jobs/request?`) marks the
//! connection, and the first read of the answer on a marked connection, when it is a `200` (a
//! job), waits until [`HoldingProxy::release`]. It also notes the agent's call that ends its long
//! polls (`POST /api/v1/agent/jobs/request/stop`).

use std::io::{Read as _, Write as _};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

const POLL: &[u8] = b"POST /api/v1/agent/jobs/request?";
const STOP: &[u8] = b"POST /api/v1/agent/jobs/request/stop";

#[derive(Default)]
struct State {
    /// A job's answer is held back.
    holding: bool,
    /// Held answers may go.
    released: bool,
    /// The agent asked the server to end its long polls.
    stop_seen: bool,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn update(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.state.lock().unwrap());
        self.changed.notify_all();
    }

    fn wait(&self, what: &str, until: impl Fn(&State) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut state = self.state.lock().unwrap();
        while !until(&state) {
            let left = deadline.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "timed out waiting for {what}");
            state = self.changed.wait_timeout(state, left).unwrap().0;
        }
    }
}

/// The proxy; it runs until the test process ends.
pub(crate) struct HoldingProxy {
    /// Its base URL, for `gantry agent --server`.
    pub(crate) url: String,
    shared: Arc<Shared>,
}

impl HoldingProxy {
    /// A proxy in front of the server at `upstream` (`http://host:port`).
    pub(crate) fn start(upstream: &str) -> HoldingProxy {
        let upstream = upstream
            .trim_start_matches("http://")
            .trim_end_matches('/')
            .to_string();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let shared = Arc::new(Shared::default());
        let s = shared.clone();
        std::thread::spawn(move || {
            for agent in listener.incoming() {
                let Ok(agent) = agent else { continue };
                let Ok(server) = TcpStream::connect(&upstream) else {
                    continue;
                };
                let polling = Arc::new(AtomicBool::new(false));
                let (a, srv) = (agent.try_clone().unwrap(), server.try_clone().unwrap());
                let (s1, p1) = (s.clone(), polling.clone());
                std::thread::spawn(move || requests(a, srv, &s1, &p1));
                let s2 = s.clone();
                std::thread::spawn(move || answers(server, agent, &s2, &polling));
            }
        });
        HoldingProxy { url, shared }
    }

    /// Waits until the answer that brings a job is held back.
    pub(crate) fn wait_holding(&self) {
        self.shared.wait("a job's answer to hold", |s| s.holding);
    }

    /// Waits until the agent asked the server to end its long polls.
    pub(crate) fn wait_stop_polling(&self) {
        self.shared
            .wait("the agent to end its long polls", |s| s.stop_seen);
    }

    /// Lets held answers go, and later ones through.
    pub(crate) fn release(&self) {
        self.shared.update(|s| s.released = true);
    }
}

/// Agent to server.
fn requests(from: TcpStream, to: TcpStream, shared: &Shared, polling: &AtomicBool) {
    pump(from, to, |read| {
        if read.starts_with(POLL) {
            polling.store(true, Ordering::SeqCst);
        } else if read.starts_with(STOP) {
            shared.update(|s| s.stop_seen = true);
        }
    });
}

/// Server to agent.
fn answers(from: TcpStream, to: TcpStream, shared: &Shared, polling: &AtomicBool) {
    pump(from, to, |read| {
        if polling.swap(false, Ordering::SeqCst) && read.starts_with(b"HTTP/1.1 200") {
            shared.update(|s| s.holding = true);
            shared.wait("the test to release the job", |s| s.released);
        }
    });
}

/// Copies `from` to `to` until either side closes, showing each read to `look` before it goes on.
fn pump(mut from: TcpStream, mut to: TcpStream, mut look: impl FnMut(&[u8])) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        look(&buf[..n]);
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}
