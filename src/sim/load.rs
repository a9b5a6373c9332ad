//! A steady load generator: what users of the service do during a rollout.
//!
//! [`Load::start`] fires `GET /` at a fixed rate through the load balancer
//! (open loop: a slow or failing answer never delays the next request), over
//! pooled keep-alive connections, each with a short client timeout. Every
//! request's outcome is recorded with the time it was sent. It stops at
//! [`Load::stop`], or by itself after `max_duration` / `max_requests`; the
//! requests still in flight then finish within their timeout.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};

use super::client::Pool;

/// How much load.
#[derive(Clone, Debug)]
pub struct LoadConfig {
    /// Requests per second.
    pub rate: u32,
    /// Client timeout of each request.
    pub timeout: Duration,
    /// Stop by itself after this long.
    pub max_duration: Duration,
    /// Stop by itself after this many requests.
    pub max_requests: u64,
}

/// One request's fate.
#[derive(Clone, Debug)]
pub struct Outcome {
    /// When it was sent, from the start of the load.
    pub at: Duration,
    /// HTTP status, `None` when no answer came.
    pub status: Option<u16>,
    /// `"200"`, `"502"`, `"refused"`, `"reset"`, `"timeout"`…
    pub kind: String,
}

impl Outcome {
    /// A user would call this a failed request: no answer or a 5xx.
    pub fn failed(&self) -> bool {
        self.status.is_none_or(|s| s >= 500)
    }
}

/// What the load saw.
#[derive(Clone, Debug)]
pub struct LoadResult {
    /// When the first request was sent.
    pub started: Instant,
    /// Every request, in the order sent.
    pub outcomes: Vec<Outcome>,
}

impl LoadResult {
    /// Requests sent.
    pub fn requests(&self) -> usize {
        self.outcomes.len()
    }
    /// Requests that failed.
    pub fn failed(&self) -> usize {
        self.outcomes.iter().filter(|o| o.failed()).count()
    }
}

/// A running load generator.
pub struct Load {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<LoadResult>,
}

impl Load {
    /// Start sending to `target` now.
    pub fn start(target: SocketAddr, cfg: LoadConfig) -> Load {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(target, cfg, stopped));
        Load { stop, task }
    }

    /// Stop sending, wait for the requests in flight, and return every outcome.
    pub async fn stop(self) -> std::io::Result<LoadResult> {
        self.stop.send_replace(true);
        self.task.await.map_err(std::io::Error::other)
    }
}

async fn run(
    target: SocketAddr,
    cfg: LoadConfig,
    mut stopped: watch::Receiver<bool>,
) -> LoadResult {
    let pool = Arc::new(Pool::new(target));
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let period = Duration::from_secs_f64(1.0 / f64::from(cfg.rate.max(1)));
    let mut ticks = tokio::time::interval(period);
    // Keep the rate: requests missed while the runtime was busy go out at once.
    ticks.set_missed_tick_behavior(MissedTickBehavior::Burst);
    let mut in_flight = JoinSet::new();
    let mut sent = 0u64;
    while sent < cfg.max_requests && started.elapsed() < cfg.max_duration {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.changed() => break,
        }
        sent += 1;
        let (pool, outcomes, timeout) = (pool.clone(), outcomes.clone(), cfg.timeout);
        in_flight.spawn(async move {
            let at = started.elapsed();
            let (status, kind) = match pool.get("/", timeout).await {
                Ok(a) => (Some(a.status), a.status.to_string()),
                Err(f) => (None, f.name().to_string()),
            };
            let mut v = outcomes.lock().unwrap_or_else(|e| e.into_inner());
            v.push(Outcome { at, status, kind });
        });
        while in_flight.try_join_next().is_some() {}
    }
    // Bounded: every request ends within its own timeout.
    while in_flight.join_next().await.is_some() {}
    let mut outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|e| e.into_inner()));
    outcomes.sort_by_key(|o| o.at);
    LoadResult { started, outcomes }
}
