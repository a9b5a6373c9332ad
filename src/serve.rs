//! `drainwait serve`: the sidecar, for a `preStop.httpGet` hook on an unmodified main container.
//!
//! ```text
//!  kubelet ─GET /drain─▶ connection ─join─▶ Drainer ──(first caller)──▶ spawn run::wait ─┐
//!  kubelet ─GET /drain─▶ connection ─join─┘   ▲                                           │
//!                                             └──── watch channel: Summary as JSON ◀──────┘
//!  Prometheus ─GET /metrics─▶ metrics::render      probes ─GET /healthz─▶ "ok"
//! ```
//!
//! One hyper HTTP/1 connection task per accepted socket, at most
//! [`MAX_CONNECTIONS`] at once (more are closed at once), headers bounded by
//! hyper's buffer ([`MAX_HEADER_BYTES`], answered 431 beyond), bodies by
//! [`MAX_BODY_BYTES`] (413), slow headers by a read timeout, one request per
//! connection. The [`Drainer`] runs at most one drain at a time, in its own
//! task so that a caller hanging up does not cancel it; every caller, also
//! one that comes after the end, gets the same JSON (a `not-deleting` result
//! is not kept: that was a container restart, and the pod's real deletion
//! still needs its drain). The drain ignores signals; the accept loop decides
//! what a signal means: SIGINT exits at once (130); SIGTERM exits at once (0)
//! unless a drain is running — a plain sidecar gets SIGTERM in parallel with
//! the main container's preStop — then it keeps serving until the drain ends
//! (its own deadline bounds it), lets the callers read the result, and exits 0.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Body as _, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep_until, timeout};

use crate::config::{ConfigError, ServeArgs, Settings};
use crate::decision::Outcome;
use crate::report::Summary;
use crate::{metrics, pod, run};

/// Connections served at once; further ones are closed as soon as accepted.
pub const MAX_CONNECTIONS: usize = 64;
/// Largest request head (request line + headers) read; hyper answers 431 beyond.
/// Also hyper's smallest allowed buffer.
pub const MAX_HEADER_BYTES: usize = 8192;
/// Largest request body accepted (none is expected); 413 beyond.
pub const MAX_BODY_BYTES: usize = 1024;
/// A client must send its whole request head within this, or the connection is closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// A client must send its (small) body within this.
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(5);
/// After the last drain ended on SIGTERM: time for its callers to read the result.
const RESULT_DELIVERY: Duration = Duration::from_secs(2);

/// A finished drain: the summary and its JSON, shared by every caller.
#[derive(Debug)]
pub struct Finished {
    /// The summary, as `run::wait` returned it.
    pub summary: Summary,
    /// `serde_json` of the summary, newline-terminated.
    pub body: Bytes,
}

type Slot = watch::Receiver<Option<Arc<Finished>>>;

/// Runs at most one drain at a time and hands its result to every caller.
pub struct Drainer {
    /// The checked settings, or why they are invalid and how long to wait instead.
    settings: Result<Settings, (ConfigError, Duration)>,
    /// Pod name for reports when the settings are invalid.
    who: String,
    /// The current (or last) drain; `None` before the first.
    current: Mutex<Option<Slot>>,
}

impl Drainer {
    /// A drainer for these settings; with invalid ones each drain waits `fallback` and reports it.
    pub fn new(settings: Result<Settings, (ConfigError, Duration)>, who: String) -> Arc<Drainer> {
        Arc::new(Drainer {
            settings,
            who,
            current: Mutex::new(None),
        })
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<Slot>> {
        // The slot is replaced whole; a poisoned lock still holds a valid one.
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Join the running drain, or the finished one whose result is kept, or start one.
    /// Returns the result channel and whether this call started the drain.
    pub fn join(self: &Arc<Self>) -> (Slot, bool) {
        let mut current = self.slot();
        if let Some(rx) = current.as_ref() {
            let keep = match rx.borrow().as_deref() {
                None => true,
                Some(f) => f.summary.outcome() != Outcome::NotDeleting,
            };
            if keep {
                return (rx.clone(), false);
            }
        }
        let (tx, rx) = watch::channel(None);
        *current = Some(rx.clone());
        let me = self.clone();
        // Its own task: a caller that hangs up must not cancel the drain.
        tokio::spawn(async move {
            let finished = me.drain().await;
            tx.send_replace(Some(Arc::new(finished)));
        });
        (rx, true)
    }

    /// Whether a drain is running now.
    pub fn running(&self) -> bool {
        self.slot().as_ref().is_some_and(|rx| rx.borrow().is_none())
    }

    /// Resolves when the current drain has ended; never, when there is none.
    fn ended(&self) -> impl Future<Output = ()> + use<> {
        let rx = self.slot().clone();
        async move {
            match rx {
                Some(mut rx) => {
                    // Err: the drain task is gone (it panicked); nothing more to wait for.
                    let _ = rx.wait_for(Option::is_some).await;
                }
                None => std::future::pending().await,
            }
        }
    }

    async fn drain(&self) -> Finished {
        metrics::drain_running(true);
        let start = Instant::now();
        let summary = match &self.settings {
            // Signals are the accept loop's business: the drain runs to its own end.
            Ok(settings) => run::wait(settings.clone(), start, std::future::pending()).await,
            Err((e, wait)) => {
                // SPEC step 1, per drain: never worse than a fixed sleep.
                tracing::error!(var = e.var, value = %e.value, "invalid configuration: {e}; waiting DRAINWAIT_FALLBACK_WAIT ({}) instead of draining", humantime::format_duration(*wait));
                sleep_until(start + *wait).await;
                let msg =
                    format!("invalid configuration: {e}; waited DRAINWAIT_FALLBACK_WAIT instead");
                let summary =
                    Summary::new(Outcome::InvalidConfig, start, self.who.clone(), msg, &[]);
                summary.log();
                summary
            }
        };
        metrics::drain_running(false);
        metrics::drain_finished(&summary);
        let mut body = serde_json::to_vec(&summary).unwrap_or_else(|e| {
            format!("{{\"error\":\"cannot encode the summary: {e}\"}}").into_bytes()
        });
        body.push(b'\n');
        Finished {
            summary,
            body: Bytes::from(body),
        }
    }
}

/// Run `drainwait serve` until a signal ends it; returns the exit code.
pub async fn run(args: &ServeArgs) -> u8 {
    let listen = match args.listen.trim().parse::<SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            let e = ConfigError {
                var: "DRAINWAIT_LISTEN",
                flag: "listen",
                value: args.listen.clone(),
                accepted: "an address and port like 0.0.0.0:9090 or [::]:9090".into(),
            };
            tracing::error!(var = e.var, value = %e.value, "{e}; cannot serve, exiting 2");
            return 2;
        }
    };
    let settings = Settings::from_args(&args.wait).map_err(|e| {
        let wait = Settings::fallback_for_invalid(&args.wait);
        tracing::error!(var = e.var, value = %e.value, "invalid configuration: {e}; serving anyway: each /drain will wait DRAINWAIT_FALLBACK_WAIT ({}) and report it", humantime::format_duration(wait));
        (e, wait)
    });
    let who = pod::resolve_name(
        args.wait
            .pod_name
            .as_deref()
            .filter(|s| !s.trim().is_empty()),
        |k| std::env::var(k).ok(),
    )
    .unwrap_or_else(|| "?".into());
    // Before binding: a SIGTERM that comes right after start must already be ours.
    let (mut int, mut term) = match (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) {
        (Ok(i), Ok(t)) => (i, t),
        (Err(e), _) | (_, Err(e)) => {
            tracing::error!("cannot install the SIGINT/SIGTERM handlers ({e}); exiting 1");
            return 1;
        }
    };
    let listener = match TcpListener::bind(listen).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(
                "cannot listen on {listen}: {e}; set DRAINWAIT_LISTEN (--listen) to a free address and port"
            );
            return 1;
        }
    };
    let bound = listener.local_addr().unwrap_or(listen);
    tracing::info!(address = %bound, "listening on http://{bound}: GET /drain runs the drain, /healthz, /metrics");

    let drainer = Drainer::new(settings, who);
    let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let mut terminating = false;
    let mut last_full: Option<Instant> = None;
    loop {
        let ended = drainer.ended();
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => match permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let (drainer, stop) = (drainer.clone(), stop_rx.clone());
                        conns.spawn(async move {
                            connection(stream, peer, drainer, stop).await;
                            drop(permit);
                        });
                    }
                    Err(_) => {
                        // Warn once per episode, not per connection: a flood must not flood the log.
                        if last_full.is_none_or(|t: Instant| t.elapsed() > Duration::from_secs(10)) {
                            tracing::warn!(%peer, "{MAX_CONNECTIONS} connections open: closing new ones (this one from {peer}) until some end");
                        }
                        last_full = Some(Instant::now());
                        drop(stream);
                    }
                },
                Err(e) => {
                    // Out of file descriptors and the like: do not spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            _ = int.recv() => {
                tracing::warn!("received SIGINT, exiting at once");
                return 130;
            }
            _ = term.recv(), if !terminating => {
                if !drainer.running() {
                    tracing::info!("received SIGTERM with no drain running, exiting");
                    return 0;
                }
                tracing::info!("received SIGTERM during a drain: serving until the drain ends, then exiting");
                terminating = true;
            }
            () = ended, if terminating => break,
        }
    }
    // The drain ended after SIGTERM: stop accepting, let the callers read the result.
    drop(listener);
    stop_tx.send_replace(true);
    let delivered = timeout(RESULT_DELIVERY, async {
        while conns.join_next().await.is_some() {}
    })
    .await;
    if delivered.is_err() {
        tracing::debug!(
            "connections still open {} after the drain; closing them",
            humantime::format_duration(RESULT_DELIVERY)
        );
    }
    tracing::info!("drain finished after SIGTERM, exiting");
    0
}

/// Serve one connection until it closes, or until `stop` asks for a graceful end.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    drainer: Arc<Drainer>,
    mut stop: watch::Receiver<bool>,
) {
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let drainer = drainer.clone();
        async move { Ok::<_, Infallible>(respond(req, peer, &drainer).await) }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(MAX_HEADER_BYTES)
        // One request per connection: kubelet and probes open a new one anyway, and
        // an idle keep-alive connection would hold one of the few slots.
        .keep_alive(false);
    let conn = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(%peer, "connection from {peer} ended: {e}");
            }
        }
        // The `Ref` the wait returns must not live across an await: keep only `()`.
        () = async { let _ = stop.wait_for(|s| *s).await; } => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

type Resp = Response<Full<Bytes>>;

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Resp {
    let mut resp = Response::new(Full::new(body.into()));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

fn text(status: StatusCode, body: &'static str) -> Resp {
    reply(status, "text/plain; charset=utf-8", body)
}

async fn respond(req: Request<Incoming>, peer: SocketAddr, drainer: &Arc<Drainer>) -> Resp {
    let path: &'static str = match req.uri().path() {
        "/drain" => "/drain",
        "/healthz" => "/healthz",
        "/metrics" => "/metrics",
        _ => "other",
    };
    let resp = route(req, path, peer, drainer).await;
    metrics::http_request(path, resp.status().as_u16());
    // Method and path only: query strings and headers stay out of the logs.
    tracing::debug!(%peer, path, status = resp.status().as_u16(), "request");
    resp
}

async fn route(
    req: Request<Incoming>,
    path: &'static str,
    peer: SocketAddr,
    drainer: &Arc<Drainer>,
) -> Resp {
    if path == "other" {
        return text(
            StatusCode::NOT_FOUND,
            "not found: drainwait serves GET /drain, /healthz and /metrics\n",
        );
    }
    if req.method() != Method::GET {
        let mut resp = text(
            StatusCode::METHOD_NOT_ALLOWED,
            "method not allowed: use GET\n",
        );
        resp.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    if let Err(resp) = read_small_body(req.into_body()).await {
        return resp;
    }
    match path {
        "/healthz" => text(StatusCode::OK, "ok"),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            metrics::render(),
        ),
        _ => {
            let (mut rx, started) = drainer.join();
            if started {
                tracing::info!(%peer, "drain requested by {peer}: starting the drain");
            } else {
                tracing::info!(%peer, "drain requested by {peer}: joining the current or finished drain");
            }
            match rx.wait_for(Option::is_some).await {
                Ok(done) => match done.as_deref() {
                    Some(f) => reply(StatusCode::OK, "application/json", f.body.clone()),
                    None => text(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the drain ended without a result\n",
                    ),
                },
                Err(_) => text(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "the drain task ended without a result; see drainwait's log\n",
                ),
            }
        }
    }
}

/// Read and drop a request body of at most [`MAX_BODY_BYTES`], so the request is
/// complete before answering; a larger or slow one is an error response.
async fn read_small_body(body: Incoming) -> Result<(), Resp> {
    if body.is_end_stream() {
        return Ok(());
    }
    let too_large = || {
        text(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request body too large: drainwait expects none\n",
        )
    };
    if body.size_hint().lower() > MAX_BODY_BYTES as u64 {
        return Err(too_large());
    }
    match timeout(
        BODY_READ_TIMEOUT,
        Limited::new(body, MAX_BODY_BYTES).collect(),
    )
    .await
    {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
        Ok(Err(_)) => Err(text(StatusCode::BAD_REQUEST, "malformed request body\n")),
        Err(_) => Err(text(
            StatusCode::REQUEST_TIMEOUT,
            "request body not received in time\n",
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use crate::config::{Cli, Command};

    #[test]
    fn listen_defaults_to_every_address_on_9090() {
        match Cli::try_parse_from(["drainwait", "serve"]).map(|c| c.command) {
            Ok(Some(Command::Serve(a))) => {
                assert_eq!(a.listen, "0.0.0.0:9090");
                assert_eq!(a.wait.max_wait, "5m", "the wait's options apply");
            }
            other => panic!("expected serve, got {other:?}"),
        }
        match Cli::try_parse_from([
            "drainwait",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--lb",
            "none",
        ])
        .map(|c| c.command)
        {
            Ok(Some(Command::Serve(a))) => assert_eq!(
                (a.listen.as_str(), a.wait.lb.as_str()),
                ("127.0.0.1:0", "none")
            ),
            other => panic!("expected serve, got {other:?}"),
        }
    }
}
