//! The accept loop (issue 16, finding 4): HTTP/1.1 connections served with hyper, each with a
//! header-read timeout and an idle timeout, at most `max_connections` at once, and a graceful
//! shutdown that lets running requests finish. `axum::serve` has none of these knobs, and hyper's
//! own header timeout also runs while a kept-alive connection is idle, so both are kept here.
//!
//! A connection is in one of three phases, and only two of them have a deadline:
//! - `Head`, from its start, or from the first byte after the previous response: the whole
//!   request head must arrive within `header_read_timeout`;
//! - `Busy`, from the head's end until the response's body has been written: no deadline here
//!   (long polls and log streams are requests; webhook bodies have their own timeout);
//! - `Idle`, after a response: the next request must start within `idle_timeout`.
//!
//! When a deadline passes the connection is dropped, which closes its socket.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore, watch};
use tokio::time::Instant;
use tower::ServiceExt as _;

/// The timeouts and the connection cap.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Limits {
    pub header_read: Duration,
    pub idle: Duration,
    pub max_connections: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    Head,
    Busy,
    Idle,
}

/// A connection's phase and since when, shared by its socket, its service and its watchdog.
struct Phase {
    now: Mutex<(Stage, Instant)>,
    changed: Notify,
}

impl Phase {
    fn new() -> Phase {
        Phase {
            now: Mutex::new((Stage::Head, Instant::now())),
            changed: Notify::new(),
        }
    }

    fn get(&self) -> (Stage, Instant) {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set(&self, stage: Stage) {
        *self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = (stage, Instant::now());
        self.changed.notify_one();
    }

    /// Bytes arrived: on an idle connection, a new request head starts.
    fn read(&self) {
        let mut now = self
            .now
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if now.0 == Stage::Idle {
            *now = (Stage::Head, Instant::now());
            drop(now);
            self.changed.notify_one();
        }
    }

    /// Resolves when the current phase's deadline has passed.
    async fn expired(&self, limits: Limits) {
        loop {
            let (stage, since) = self.get();
            let deadline = match stage {
                Stage::Head => Some(since + limits.header_read),
                Stage::Idle => Some(since + limits.idle),
                Stage::Busy => None,
            };
            match deadline {
                Some(d) if Instant::now() >= d => return,
                Some(d) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(d) => {}
                        () = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }
}

/// Marks its connection idle when dropped: it goes with a response's body, which hyper drops
/// once the body is written.
struct IdleWhenDropped(Arc<Phase>);

impl Drop for IdleWhenDropped {
    fn drop(&mut self) {
        self.0.set(Stage::Idle);
    }
}

/// A socket that tells its [`Phase`] when bytes arrive.
struct Watched {
    inner: TcpStream,
    phase: Arc<Phase>,
}

impl AsyncRead for Watched {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.phase.read();
        }
        r
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

/// Resolves when `shutdown` is true (at once when it already is).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Serves `app` on `listener` until `shutdown` turns true, then waits for the open connections'
/// running requests to finish (idle connections are closed at once).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(Semaphore::new(
        limits.max_connections.clamp(1, Semaphore::MAX_PERMITS),
    ));
    // Every connection holds a receiver; `closed()` resolves when the last one has gone.
    let (open_tx, open_rx) = watch::channel(());
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            () = stopped(&mut shutdown) => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors, say: wait a moment, as axum::serve does.
                    if !matches!(
                        e.kind(),
                        std::io::ErrorKind::ConnectionRefused
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::ConnectionReset
                    ) {
                        tracing::warn!(error = %e, "cannot accept a connection");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let shutdown = shutdown.clone();
        let open = open_rx.clone();
        tokio::spawn(async move {
            connection(stream, peer, app, limits, shutdown).await;
            drop(open);
            drop(slot);
        });
    }
    drop(listener);
    drop(open_rx);
    open_tx.closed().await;
}

/// Serves one connection until it ends, its phase's deadline passes, or the server shuts down.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    app: Router,
    limits: Limits,
    mut shutdown: watch::Receiver<bool>,
) {
    let phase = Arc::new(Phase::new());
    let io = TokioIo::new(Watched {
        inner: stream,
        phase: phase.clone(),
    });
    let service = {
        let phase = phase.clone();
        hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
            phase.set(Stage::Busy);
            req.extensions_mut().insert(ConnectInfo(peer));
            let app = app.clone();
            let idle = IdleWhenDropped(phase.clone());
            async move {
                let resp = match app.oneshot(req).await {
                    Ok(r) => r,
                    Err(never) => match never {},
                };
                Ok::<_, Infallible>(resp.map(|body| {
                    axum::body::Body::new(body.map_frame(move |f| {
                        let _ = &idle;
                        f
                    }))
                }))
            }
        })
    };
    let conn = hyper::server::conn::http1::Builder::new().serve_connection(io, service);
    tokio::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                return;
            }
            () = stopped(&mut shutdown), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
            () = phase.expired(limits) => {
                tracing::debug!(%peer, "connection timed out");
                return;
            }
        }
    }
}
