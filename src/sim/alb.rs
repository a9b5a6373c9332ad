//! An AWS Application Load Balancer emulator: a real reverse proxy plus the
//! control plane around it.
//!
//! ```text
//! endpoints controller ──endpoint_ready / endpoint_unready──▶ LB controller (after its delay)
//!                                                              │ register: FakeElb initial → healthy
//!                                                              │ deregister: FakeElb draining → unused
//!                                                              ▼
//! clients ──HTTP──▶ proxy ──round robin over routable targets──▶ pods (127.x.y.z:port)
//!                     ▲ routable = healthy, or draining for less than its propagation delay
//! drainwait ──DescribeTargetHealth──▶ FakeElb (the same target states)
//! ```
//!
//! The proxy is the *data plane*: it keeps its own table of targets with the
//! instants they became routable and stop being routable. The *control
//! plane* is the shared [`FakeElb`], which answers drainwait. Both are
//! written together by the LB controller, so they agree by construction.
//! The one deliberate gap is ALB's: after a target turns `draining`, the
//! load balancer's nodes keep sending it new requests for a while (2–17 s
//! observed, aws-load-balancer-controller #2366). That propagation delay is
//! drawn from a seeded RNG, so a run can be repeated exactly.
//!
//! Errors are ALB's: 502 when the target refuses, resets or closes before
//! answering, 504 when it is too slow, 503 when no target is routable.

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::StatusCode;
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep};

use super::client::{Failure, Pool};
use super::elb::FakeElb;
use super::http::{self, Server};

/// How the emulated load balancer and its controller behave.
#[derive(Clone, Debug)]
pub struct AlbConfig {
    /// Target group the LB controller registers pods in.
    pub target_group_arn: String,
    /// Target port (the pod port).
    pub port: u16,
    /// aws-load-balancer-controller's reaction time to an endpoint change.
    pub controller_delay: Duration,
    /// From registration (`initial`) to `healthy`: the health checks passing.
    pub health_check_delay: Duration,
    /// The target group's deregistration delay: `draining` → `unused`.
    pub deregistration_delay: Duration,
    /// After `draining`, the proxy keeps routing new requests to the target
    /// for a time drawn uniformly from this range.
    pub propagation: (Duration, Duration),
    /// Proxy → target timeout (answered 504).
    pub target_timeout: Duration,
    /// Seed of the propagation delays.
    pub seed: u64,
}

/// When things happened to one target.
#[derive(Clone, Debug)]
pub struct TargetTimes {
    /// Target id (the pod IP).
    pub ip: IpAddr,
    /// Registered (`initial`).
    pub registered_at: Instant,
    /// `healthy`: the proxy routes to it from here on.
    pub healthy_at: Instant,
    /// `draining` began.
    pub draining_at: Option<Instant>,
    /// The proxy's last moment of routing new requests to it.
    pub stops_routing_at: Option<Instant>,
    /// When the proxy last actually sent it a request.
    pub last_routed_at: Option<Instant>,
    /// Requests sent to it.
    pub routed: u64,
}

/// Totals of the proxy.
#[derive(Clone, Debug, Default)]
pub struct AlbStats {
    /// Requests received.
    pub requests: u64,
    /// Answered 502: the target refused, reset or closed.
    pub bad_gateway: u64,
    /// Answered 503: no routable target.
    pub unavailable: u64,
    /// Answered 504: the target was too slow.
    pub timeout: u64,
}

struct Entry {
    pool: Arc<Pool>,
    times: TargetTimes,
}

struct Table {
    targets: Vec<Entry>,
    /// Round-robin cursor into `targets`.
    next: usize,
    rng: StdRng,
    stats: AlbStats,
}

impl Table {
    /// The next routable target after the cursor, marked as routed to.
    fn pick(&mut self, now: Instant) -> Option<Arc<Pool>> {
        let n = self.targets.len();
        for i in 0..n {
            let idx = (self.next + i) % n;
            let t = &mut self.targets[idx].times;
            let routable = t.healthy_at <= now && t.stops_routing_at.is_none_or(|stop| now < stop);
            if routable {
                self.next = idx + 1;
                t.last_routed_at = Some(now);
                t.routed += 1;
                return Some(self.targets[idx].pool.clone());
            }
        }
        None
    }

    fn entry(&mut self, ip: IpAddr) -> Option<&mut Entry> {
        self.targets.iter_mut().find(|e| e.times.ip == ip)
    }
}

struct Inner {
    elb: Arc<FakeElb>,
    cfg: AlbConfig,
    table: Mutex<Table>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// LB controller: register the pod IP; `initial` now, `healthy` after the health checks.
    fn register(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut table = self.lock();
        if table
            .entry(ip)
            .is_some_and(|e| e.times.draining_at.is_none())
        {
            return;
        }
        let (arn, port) = (&self.cfg.target_group_arn, self.cfg.port);
        let id = ip.to_string();
        // A fresh registration: forget whatever an earlier one had scheduled.
        self.elb.set_state(
            arn,
            &id,
            port,
            "initial",
            Some("Elb.RegistrationInProgress"),
        );
        let healthy = (
            self.cfg.health_check_delay,
            "healthy".to_string(),
            None::<String>,
        );
        self.elb.schedule(arn, &id, port, vec![healthy]);
        table.targets.retain(|e| e.times.ip != ip);
        table.targets.push(Entry {
            pool: Arc::new(Pool::new(SocketAddr::new(ip, port))),
            times: TargetTimes {
                ip,
                registered_at: now,
                healthy_at: now + self.cfg.health_check_delay,
                draining_at: None,
                stops_routing_at: None,
                last_routed_at: None,
                routed: 0,
            },
        });
    }

    /// LB controller: deregister; the proxy keeps routing for the propagation delay.
    fn deregister(&self, ip: IpAddr) {
        let now = Instant::now();
        let mut table = self.lock();
        let (lo, hi) = self.cfg.propagation;
        let propagation = if hi > lo {
            lo + (hi - lo).mul_f64(table.rng.random::<f64>())
        } else {
            lo
        };
        let Some(entry) = table.entry(ip) else { return };
        if entry.times.draining_at.is_some() {
            return;
        }
        let dereg = self.cfg.deregistration_delay;
        self.elb.deregister(
            &self.cfg.target_group_arn,
            &ip.to_string(),
            self.cfg.port,
            dereg,
        );
        entry.times.draining_at = Some(now);
        // A target that never became healthy was never routed to.
        let start = now.max(entry.times.healthy_at);
        entry.times.stops_routing_at = Some(start + propagation.min(dereg));
    }
}

/// A running ALB emulator; dropping it stops the proxy and the controller.
pub struct Alb {
    proxy: Server,
    inner: Arc<Inner>,
    tasks: Mutex<JoinSet<()>>,
}

impl Alb {
    /// Start the proxy on `bind` (port 0 = any free port).
    pub async fn start(
        bind: SocketAddr,
        elb: Arc<FakeElb>,
        cfg: AlbConfig,
    ) -> std::io::Result<Alb> {
        let inner = Arc::new(Inner {
            elb,
            table: Mutex::new(Table {
                targets: Vec::new(),
                next: 0,
                rng: StdRng::seed_from_u64(cfg.seed),
                stats: AlbStats::default(),
            }),
            cfg,
        });
        let shared = inner.clone();
        let handler: http::Handler = Arc::new(move |req| {
            let inner = shared.clone();
            Box::pin(async move { proxy(&inner, req.uri().path()).await })
        });
        let proxy = Server::start(bind, handler).await?;
        Ok(Alb {
            proxy,
            inner,
            tasks: Mutex::new(JoinSet::new()),
        })
    }

    /// The proxy's address (what clients connect to).
    pub fn addr(&self) -> SocketAddr {
        self.proxy.addr()
    }

    /// The emulator's settings.
    pub fn config(&self) -> &AlbConfig {
        &self.inner.cfg
    }

    /// The endpoints controller saw the pod's endpoint become ready: the LB
    /// controller registers it after its delay.
    pub fn endpoint_ready(&self, ip: IpAddr) {
        let inner = self.inner.clone();
        self.after(self.inner.cfg.controller_delay, move || inner.register(ip));
    }

    /// The pod's endpoint is not ready any more (terminating or gone): the LB
    /// controller deregisters it after its delay (a second call changes nothing).
    pub fn endpoint_unready(&self, ip: IpAddr) {
        let inner = self.inner.clone();
        self.after(self.inner.cfg.controller_delay, move || {
            inner.deregister(ip)
        });
    }

    /// Whether the target is `healthy` in ELBv2 (what a pod readiness gate reads).
    pub fn is_healthy(&self, ip: IpAddr) -> bool {
        let cfg = &self.inner.cfg;
        self.inner
            .elb
            .state_of(&cfg.target_group_arn, &ip.to_string(), cfg.port)
            .is_some_and(|(state, _)| state == "healthy")
    }

    /// The target's timeline, if it was ever registered.
    pub fn target_times(&self, ip: IpAddr) -> Option<TargetTimes> {
        self.inner
            .lock()
            .targets
            .iter()
            .find(|e| e.times.ip == ip)
            .map(|e| e.times.clone())
    }

    /// Proxy totals so far.
    pub fn stats(&self) -> AlbStats {
        self.inner.lock().stats.clone()
    }

    fn after(&self, delay: Duration, f: impl FnOnce() + Send + 'static) {
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        // Reap finished tasks so the set stays small over a long run.
        while tasks.try_join_next().is_some() {}
        tasks.spawn(async move {
            sleep(delay).await;
            f();
        });
    }
}

/// Forward one request to the next routable target.
async fn proxy(inner: &Inner, path: &str) -> hyper::Response<http::Body> {
    let picked = {
        let mut table = inner.lock();
        table.stats.requests += 1;
        let picked = table.pick(Instant::now());
        if picked.is_none() {
            table.stats.unavailable += 1;
        }
        picked
    };
    let Some(pool) = picked else {
        return http::full(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "503 Service Temporarily Unavailable: no healthy target\n",
        );
    };
    match pool.get(path, inner.cfg.target_timeout).await {
        Ok(answer) => {
            let status = StatusCode::from_u16(answer.status).unwrap_or(StatusCode::BAD_GATEWAY);
            http::full(status, "text/plain", answer.body)
        }
        Err(Failure::Timeout) => {
            inner.lock().stats.timeout += 1;
            http::full(
                StatusCode::GATEWAY_TIMEOUT,
                "text/plain",
                "504 Gateway Time-out\n",
            )
        }
        Err(f) => {
            inner.lock().stats.bad_gateway += 1;
            let msg = format!("502 Bad Gateway: target {} {}\n", pool.addr(), f.name());
            http::full(StatusCode::BAD_GATEWAY, "text/plain", msg)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    async fn pod(ip: [u8; 4], port: u16) -> Server {
        let handler: http::Handler =
            Arc::new(|_| Box::pin(async { http::full(StatusCode::OK, "text/plain", "pod") }));
        Server::start(SocketAddr::from((ip, port)), handler)
            .await
            .expect("pod server")
    }

    #[tokio::test]
    async fn registers_routes_and_keeps_routing_while_draining() {
        let elb = Arc::new(FakeElb::start().await.expect("elb"));
        let arn = super::super::elb::target_group_arn("alb-test");
        let pod_server = pod([127, 0, 0, 1], 0).await;
        let port = pod_server.addr().port();
        let cfg = AlbConfig {
            target_group_arn: arn.clone(),
            port,
            controller_delay: ms(20),
            health_check_delay: ms(50),
            deregistration_delay: ms(2000),
            propagation: (ms(300), ms(300)),
            target_timeout: ms(500),
            seed: 1,
        };
        let alb = Alb::start(SocketAddr::from(([127, 0, 0, 1], 0)), elb.clone(), cfg)
            .await
            .expect("alb");
        let client = Pool::new(alb.addr());
        let ip: IpAddr = [127, 0, 0, 1].into();
        let t = Duration::from_secs(1);

        assert_eq!(client.get("/", t).await.expect("answer").status, 503);
        alb.endpoint_ready(ip);
        sleep(ms(40)).await;
        assert!(!alb.is_healthy(ip), "initial until the health checks pass");
        sleep(ms(80)).await;
        assert!(alb.is_healthy(ip));
        assert_eq!(client.get("/", t).await.expect("answer").status, 200);

        alb.endpoint_unready(ip);
        alb.endpoint_unready(ip); // once only
        sleep(ms(60)).await;
        let state = elb.state_of(&arn, "127.0.0.1", port).expect("group");
        assert_eq!(state.0, "draining");
        // Draining, yet still routed to until the propagation delay is over.
        assert_eq!(client.get("/", t).await.expect("answer").status, 200);
        let times = alb.target_times(ip).expect("times");
        let stop = times.stops_routing_at.expect("stop");
        assert_eq!(stop - times.draining_at.expect("draining"), ms(300));
        tokio::time::sleep_until(stop + ms(10)).await;
        assert_eq!(client.get("/", t).await.expect("answer").status, 503);

        // A dead target that is still routed to answers 502.
        let other = pod([127, 0, 0, 2], port).await;
        alb.endpoint_ready([127, 0, 0, 2].into());
        sleep(ms(120)).await;
        drop(other);
        sleep(ms(20)).await;
        assert_eq!(client.get("/", t).await.expect("answer").status, 502);
        let stats = alb.stats();
        assert_eq!((stats.unavailable, stats.bad_gateway), (2, 1));
    }
}
