//! A small simulated cluster: pods that serve HTTP, an endpoints controller,
//! the ALB emulator, and pod termination with a preStop strategy.
//!
//! ```text
//! start_pod ─▶ pod server on 127.a.b.N:2746 + Pod object ─▶ endpoints controller (after its delay)
//!                                                             ├─ EndpointSlice: endpoint ready
//!                                                             └─ ALB: LB controller registers → healthy
//! terminate ─▶ deletionTimestamp = now + grace ─▶ endpoints controller (after its delay)
//!     │                                            ├─ EndpointSlice: ready=false, terminating=true
//!     │                                            └─ ALB: LB controller deregisters → draining
//!     ├─ preStop hook: none | sleep | the real drainwait binary (a child process)
//!     └─ SIGTERM: the pod exits at once, cutting what is in flight (argo-server has no handler)
//! ```
//!
//! Everything is real I/O on loopback: the Kubernetes API is [`FakeKube`],
//! ELBv2 is [`FakeElb`], and each pod IP is its own 127.0.0.0/8 address, so
//! a pod IP is also the ELBv2 target id drainwait asks about. The endpoints
//! controller is one task that applies every change due at once in a single
//! EndpointSlice write, as the real controller's work queue coalesces a
//! Service's changes. All delays come from [`Timings`], scaled for quick runs.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use hyper::StatusCode;
use k8s_openapi::api::core::v1::{ObjectReference, Pod, Service};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointSlice};
use rand::{Rng, SeedableRng, rngs::StdRng};
use serde_json::json;
use tokio::sync::Notify;
use tokio::time::{Instant, sleep, sleep_until};

use super::alb::{Alb, AlbConfig, TargetTimes};
use super::elb::{FakeElb, target_group_arn};
use super::http::{self, Server};
use super::kube::FakeKube;

/// Namespace of the simulated Deployment.
pub const NAMESPACE: &str = "argo";
/// Its Service (and the pods' name prefix).
pub const SERVICE: &str = "argo-server";
/// The pod port (argo-server's 2746), also the target port.
pub const POD_PORT: u16 = 2746;
/// The EndpointSlice the endpoints controller maintains.
const SLICE: &str = "argo-server-sim";
/// Name of the simulated target group.
pub const TARGET_GROUP: &str = "k8s-argo-argoserv-sim";
/// Time the endpoints controller takes per sync; changes arriving meanwhile are batched.
const SYNC_TIME: Duration = Duration::from_millis(5);
/// A request routed at the last moment still needs this long to finish
/// (pods answer in 20–50 ms); the demo's LB settle adds it to the propagation.
pub const IN_FLIGHT_MARGIN: Duration = Duration::from_millis(100);

/// Every delay of the simulated world, already multiplied by the time scale.
///
/// At scale 1.0 they are a cluster's: endpoints controller 1 s, LB controller
/// 2 s, health checks 5 s, deregistration delay 300 s (AWS default), ALB
/// routing on 2–17 s after `draining`, grace period 90 s, the seed's
/// `sleep 60`, and drainwait's defaults except the LB settle, which covers
/// the longest propagation observed (17 s) plus [`IN_FLIGHT_MARGIN`].
#[derive(Clone, Debug)]
pub struct Timings {
    /// The factor applied (1.0 = real cluster timings).
    pub scale: f64,
    /// Pod change → EndpointSlice write.
    pub endpoints_delay: Duration,
    /// EndpointSlice change → LB controller (de)registers the target.
    pub controller_delay: Duration,
    /// Registered → `healthy`.
    pub health_check_delay: Duration,
    /// `draining` → `unused`.
    pub deregistration_delay: Duration,
    /// The ALB keeps routing to a `draining` target for a time in this range.
    pub propagation: (Duration, Duration),
    /// `terminationGracePeriodSeconds`.
    pub grace: Duration,
    /// The fixed `sleep` strategy.
    pub sleep: Duration,
    /// `DRAINWAIT_POLL_INTERVAL`.
    pub poll_interval: Duration,
    /// `DRAINWAIT_ENDPOINTS_SETTLE`.
    pub endpoints_settle: Duration,
    /// `DRAINWAIT_LB_SETTLE`.
    pub lb_settle: Duration,
    /// `DRAINWAIT_SHUTDOWN_RESERVE`.
    pub shutdown_reserve: Duration,
    /// `DRAINWAIT_MAX_WAIT`.
    pub max_wait: Duration,
    /// `DRAINWAIT_FALLBACK_WAIT`.
    pub fallback_wait: Duration,
    /// `DRAINWAIT_REQUEST_TIMEOUT` (not below 1 s: loopback is fast, a busy machine is not).
    pub request_timeout: Duration,
}

impl Timings {
    /// Cluster timings multiplied by `scale` (e.g. 0.1: ten times faster).
    pub fn scaled(scale: f64) -> Timings {
        let s = |secs: f64| Duration::from_secs_f64(secs * scale);
        Timings {
            scale,
            endpoints_delay: s(1.0),
            controller_delay: s(2.0),
            health_check_delay: s(5.0),
            deregistration_delay: s(300.0),
            propagation: (s(2.0), s(17.0)),
            grace: s(90.0),
            sleep: s(60.0),
            poll_interval: s(2.0),
            endpoints_settle: s(2.0),
            lb_settle: s(17.0) + IN_FLIGHT_MARGIN,
            shutdown_reserve: s(5.0),
            max_wait: s(300.0),
            fallback_wait: s(30.0),
            request_timeout: s(5.0).max(Duration::from_secs(1)),
        }
    }

    /// drainwait's timing settings as environment variables.
    pub fn drainwait_env(&self) -> Vec<(&'static str, String)> {
        let ms = |d: Duration| format!("{}ms", d.as_millis().max(1));
        vec![
            ("DRAINWAIT_POLL_INTERVAL", ms(self.poll_interval)),
            ("DRAINWAIT_ENDPOINTS_SETTLE", ms(self.endpoints_settle)),
            ("DRAINWAIT_LB_SETTLE", ms(self.lb_settle)),
            ("DRAINWAIT_SHUTDOWN_RESERVE", ms(self.shutdown_reserve)),
            ("DRAINWAIT_MAX_WAIT", ms(self.max_wait)),
            ("DRAINWAIT_FALLBACK_WAIT", ms(self.fallback_wait)),
            ("DRAINWAIT_REQUEST_TIMEOUT", ms(self.request_timeout)),
        ]
    }
}

/// The preStop hook a terminating pod runs before SIGTERM.
#[derive(Clone, Debug)]
pub enum Hook {
    /// No hook: SIGTERM at once.
    None,
    /// A fixed sleep.
    Sleep(Duration),
    /// Run this drainwait executable with these arguments (e.g. `["wait"]`).
    Drainwait {
        /// The executable.
        exe: PathBuf,
        /// Its arguments.
        args: Vec<String>,
    },
}

/// What happened to one pod, as instants on the demo's clock.
#[derive(Clone, Debug)]
pub struct PodTimes {
    /// Pod name.
    pub name: String,
    /// Pod IP (= target id).
    pub ip: Ipv4Addr,
    /// Server listening, Pod object created.
    pub created_at: Instant,
    /// Endpoint written as ready.
    pub ready_at: Option<Instant>,
    /// `deletionTimestamp` set; the preStop hook starts.
    pub deleting_at: Option<Instant>,
    /// Endpoint written as ready=false, terminating=true.
    pub endpoint_flip_at: Option<Instant>,
    /// The preStop hook ended.
    pub hook_done_at: Option<Instant>,
    /// How the hook ended: `"none"`, `"slept"`, `"exit 0"`, `"killed at grace"`…
    pub hook_outcome: Option<String>,
    /// drainwait's exit code, for the drainwait hook.
    pub hook_exit: Option<i32>,
    /// SIGTERM: the server and its connections are gone.
    pub sigterm_at: Option<Instant>,
    /// The target's timeline in the load balancer.
    pub lb: Option<TargetTimes>,
}

impl PodTimes {
    /// SIGTERM minus the moment the LB stopped routing to the pod, in
    /// seconds: negative = killed while still receiving new requests.
    pub fn sigterm_after_lb_stop(&self) -> Option<f64> {
        let stop = self.lb.as_ref()?.stops_routing_at?;
        let term = self.sigterm_at?;
        Some(signed_secs(term, stop))
    }

    /// Deletion → SIGTERM: how long the pod took to terminate.
    pub fn termination(&self) -> Option<Duration> {
        Some(
            self.sigterm_at?
                .saturating_duration_since(self.deleting_at?),
        )
    }
}

/// `a - b` in seconds, signed.
pub fn signed_secs(a: Instant, b: Instant) -> f64 {
    if a >= b {
        (a - b).as_secs_f64()
    } else {
        -(b - a).as_secs_f64()
    }
}

/// Where the cluster keeps its files and how it behaves.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Delays.
    pub timings: Timings,
    /// Seed of the propagation delays and pod names.
    pub seed: u64,
    /// Directory for the kubeconfig (created when missing); the children's HOME.
    pub dir: PathBuf,
    /// drainwait's stdout and stderr are appended here.
    pub log: PathBuf,
}

enum Change {
    Add(String),
    Terminating(String),
    Remove(String),
}

struct PodRec {
    uid: String,
    server: Option<Server>,
    times: PodTimes,
}

struct State {
    pods: BTreeMap<String, PodRec>,
    next_index: u32,
    rng: StdRng,
}

struct World {
    kube: FakeKube,
    elb: Arc<FakeElb>,
    alb: Alb,
    cfg: ClusterConfig,
    /// Pods live at 127.net[0].net[1].N.
    net: [u8; 2],
    kubeconfig: PathBuf,
    state: Mutex<State>,
    /// The endpoints controller's queue: (due, change).
    queue: Mutex<Vec<(Instant, Change)>>,
    wake: Notify,
}

/// A running simulated cluster; dropping it stops every server and task.
pub struct Cluster {
    world: Arc<World>,
    controller: tokio::task::JoinHandle<()>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.controller.abort();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

impl Cluster {
    /// Start the fake API server, ELBv2 and ALB, and create the Service, its
    /// EndpointSlice and the TargetGroupBinding (no pods yet).
    pub async fn start(cfg: ClusterConfig) -> std::io::Result<Cluster> {
        std::fs::create_dir_all(&cfg.dir)?;
        let kube = FakeKube::start().await?;
        let elb = Arc::new(FakeElb::start().await?);
        // A random 127.a.b.0/24 per cluster, so runs side by side never share an address.
        let net = [rand::rng().random_range(16..=254u8), rand::rng().random()];
        let arn = target_group_arn(TARGET_GROUP);
        elb.add_target_group(&arn, TARGET_GROUP, POD_PORT);
        let t = &cfg.timings;
        let alb_cfg = AlbConfig {
            target_group_arn: arn.clone(),
            port: POD_PORT,
            controller_delay: t.controller_delay,
            health_check_delay: t.health_check_delay,
            deregistration_delay: t.deregistration_delay,
            propagation: t.propagation,
            target_timeout: Duration::from_secs(5),
            seed: cfg.seed,
        };
        let lb_addr = SocketAddr::from(([127, net[0], net[1], 254], 0));
        let alb = Alb::start(lb_addr, elb.clone(), alb_cfg)
            .await
            .map_err(|e| io_err(&format!("cannot start the load balancer on {lb_addr}"), e))?;
        let kubeconfig = cfg.dir.join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig, NAMESPACE)?;
        kube.put_service(service().map_err(|e| io_err("service", e))?);
        kube.put_endpoint_slice(empty_slice().map_err(|e| io_err("slice", e))?);
        let tgb = json!({"targetGroupARN": arn, "targetType": "ip", "serviceRef": {"name": SERVICE, "port": POD_PORT}});
        kube.put_target_group_binding(NAMESPACE, SERVICE, tgb);
        let world = Arc::new(World {
            kube,
            elb,
            alb,
            net,
            kubeconfig,
            state: Mutex::new(State {
                pods: BTreeMap::new(),
                next_index: 0,
                rng: StdRng::seed_from_u64(cfg.seed),
            }),
            cfg,
            queue: Mutex::new(Vec::new()),
            wake: Notify::new(),
        });
        let controller = tokio::spawn(endpoints_controller(world.clone()));
        Ok(Cluster { world, controller })
    }

    /// The fake Kubernetes API server.
    pub fn kube(&self) -> &FakeKube {
        &self.world.kube
    }
    /// The fake ELBv2 endpoint.
    pub fn elb(&self) -> &FakeElb {
        &self.world.elb
    }
    /// The ALB emulator.
    pub fn alb(&self) -> &Alb {
        &self.world.alb
    }
    /// The delays in force.
    pub fn timings(&self) -> &Timings {
        &self.world.cfg.timings
    }
    /// The network the pods live in, e.g. `127.61.4.0/24`.
    pub fn pod_network(&self) -> String {
        format!("127.{}.{}.0/24", self.world.net[0], self.world.net[1])
    }

    /// Start a pod of `revision`: its server listens, its Pod object exists,
    /// and the endpoints controller will add its endpoint. Returns its name.
    pub async fn start_pod(&self, revision: &str) -> std::io::Result<String> {
        let (index, suffix, seed) = {
            let mut st = lock(&self.world.state);
            st.next_index += 1;
            let suffix = pod_suffix(&mut st.rng);
            (st.next_index, suffix, st.rng.random::<u64>())
        };
        if index > 250 {
            return Err(io_err("too many pods", "at most 250 per cluster"));
        }
        let ip = Ipv4Addr::new(127, self.world.net[0], self.world.net[1], index as u8);
        let name = format!("{SERVICE}-{revision}-{suffix}");
        let server = pod_server(ip, &name, seed)
            .await
            .map_err(|e| io_err(&format!("pod {name} cannot listen on {ip}:{POD_PORT}"), e))?;
        let grace = self.world.cfg.timings.grace;
        self.world
            .kube
            .put_pod(pod(&name, ip, grace).map_err(|e| io_err("pod", e))?);
        let uid = self
            .world
            .kube
            .pod(NAMESPACE, &name)
            .and_then(|p| p.metadata.uid)
            .unwrap_or_default();
        let times = PodTimes {
            name: name.clone(),
            ip,
            created_at: Instant::now(),
            ready_at: None,
            deleting_at: None,
            endpoint_flip_at: None,
            hook_done_at: None,
            hook_outcome: None,
            hook_exit: None,
            sigterm_at: None,
            lb: None,
        };
        let rec = PodRec {
            uid,
            server: Some(server),
            times,
        };
        lock(&self.world.state).pods.insert(name.clone(), rec);
        self.world.enqueue(Change::Add(name.clone()));
        Ok(name)
    }

    /// Wait until every named pod's target is `healthy` in the LB (a pod
    /// readiness gate); an error after `limit`.
    pub async fn wait_healthy(&self, names: &[String], limit: Duration) -> std::io::Result<()> {
        let until = Instant::now() + limit;
        let ips: Vec<IpAddr> = names
            .iter()
            .filter_map(|n| self.pod_times(n))
            .map(|t| IpAddr::V4(t.ip))
            .collect();
        while !ips.iter().all(|ip| self.world.alb.is_healthy(*ip)) {
            if Instant::now() >= until {
                return Err(io_err(
                    "pods not healthy in the load balancer",
                    format!("after {limit:?}: {names:?}"),
                ));
            }
            sleep(Duration::from_millis(10)).await;
        }
        Ok(())
    }

    /// Delete a pod as kubelet does: deletionTimestamp, then the preStop
    /// hook (cut at the grace period), then SIGTERM, which argo-server obeys
    /// at once. Returns when the pod is gone.
    pub async fn terminate(&self, name: &str, hook: &Hook) -> std::io::Result<()> {
        let grace = self.world.cfg.timings.grace;
        self.world.kube.mark_deleting(NAMESPACE, name, grace);
        self.world
            .set(name, |t| t.deleting_at = Some(Instant::now()));
        self.world.enqueue(Change::Terminating(name.to_string()));
        // kubelet gives the hook at most the grace period; it dies with the container.
        let (outcome, exit) = match tokio::time::timeout(grace, self.run_hook(name, hook)).await {
            Ok(result) => result?,
            Err(_) => ("killed at the end of the grace period".to_string(), None),
        };
        let server = {
            let mut st = lock(&self.world.state);
            let rec = st.pods.get_mut(name);
            let now = Instant::now();
            rec.and_then(|r| {
                r.times.hook_done_at = Some(now);
                r.times.hook_outcome = Some(outcome);
                r.times.hook_exit = exit;
                r.times.sigterm_at = Some(now);
                r.server.take()
            })
        };
        // SIGTERM: the server task and every connection are aborted, in-flight requests cut.
        drop(server);
        self.world.kube.delete_pod(NAMESPACE, name);
        self.world.enqueue(Change::Remove(name.to_string()));
        Ok(())
    }

    async fn run_hook(&self, name: &str, hook: &Hook) -> std::io::Result<(String, Option<i32>)> {
        match hook {
            Hook::None => Ok(("none".to_string(), None)),
            Hook::Sleep(d) => {
                sleep(*d).await;
                Ok((format!("slept {:.1}s", d.as_secs_f64()), None))
            }
            Hook::Drainwait { exe, args } => {
                let mut child = ChildGuard(self.spawn_drainwait(name, exe, args)?);
                // Bounded by the caller's grace-period timeout; dropping the guard kills the child.
                loop {
                    if let Some(status) = child.0.try_wait()? {
                        let code = status.code();
                        let outcome = match code {
                            Some(c) => format!("exit {c}"),
                            None => "killed by a signal".to_string(),
                        };
                        return Ok((outcome, code));
                    }
                    sleep(Duration::from_millis(5)).await;
                }
            }
        }
    }

    fn spawn_drainwait(&self, name: &str, exe: &Path, args: &[String]) -> std::io::Result<Child> {
        let w = &self.world;
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&w.cfg.log)?;
        writeln!(
            log,
            "----- preStop hook of {NAMESPACE}/{name}: {} {}",
            exe.display(),
            args.join(" ")
        )?;
        let mut cmd = Command::new(exe);
        cmd.args(args)
            // Only what a pod would have: nothing from the user's shell leaks in.
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &w.cfg.dir)
            .env("KUBECONFIG", &w.kubeconfig)
            .env("DRAINWAIT_POD_NAME", name)
            .env("DRAINWAIT_POD_NAMESPACE", NAMESPACE)
            .env("DRAINWAIT_LOG_TO_PID1", "false")
            .envs(w.cfg.timings.drainwait_env())
            .env("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", w.elb.url())
            .env("AWS_ACCESS_KEY_ID", "AKIDSIMULATED0000001")
            .env("AWS_SECRET_ACCESS_KEY", "simulated-secret")
            .env("AWS_REGION", "us-east-1")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log));
        cmd.spawn()
            .map_err(|e| io_err(&format!("cannot run {}", exe.display()), e))
    }

    /// The pod's timeline so far, with its target's timeline from the LB.
    pub fn pod_times(&self, name: &str) -> Option<PodTimes> {
        let mut times = lock(&self.world.state).pods.get(name)?.times.clone();
        times.lb = self.world.alb.target_times(IpAddr::V4(times.ip));
        Some(times)
    }

    /// Wait until the LB has stopped routing to every named pod (bounded by `limit`).
    pub async fn wait_unrouted(&self, names: &[String], limit: Duration) {
        let until = Instant::now() + limit;
        while Instant::now() < until {
            let now = Instant::now();
            let done = names.iter().all(|n| {
                self.pod_times(n)
                    .and_then(|t| t.lb?.stops_routing_at)
                    .is_some_and(|stop| stop <= now)
            });
            if done {
                return;
            }
            sleep(Duration::from_millis(10)).await;
        }
    }
}

impl World {
    fn enqueue(&self, change: Change) {
        let due = Instant::now() + self.cfg.timings.endpoints_delay;
        lock(&self.queue).push((due, change));
        self.wake.notify_one();
    }

    fn set(&self, name: &str, f: impl FnOnce(&mut PodTimes)) {
        if let Some(rec) = lock(&self.state).pods.get_mut(name) {
            f(&mut rec.times);
        }
    }

    /// Apply every due change in one EndpointSlice write, then tell the LB controller.
    fn sync(&self, due: Vec<Change>) {
        let now = Instant::now();
        let mut notify: Vec<(IpAddr, bool)> = Vec::new();
        let mut add: Vec<Endpoint> = Vec::new();
        {
            let mut st = lock(&self.state);
            for change in &due {
                let (name, ready) = match change {
                    Change::Add(n) => (n, true),
                    Change::Terminating(n) | Change::Remove(n) => (n, false),
                };
                let Some(rec) = st.pods.get_mut(name) else {
                    continue;
                };
                let ip = rec.times.ip;
                notify.push((IpAddr::V4(ip), ready));
                match change {
                    Change::Add(_) => {
                        rec.times.ready_at = Some(now);
                        add.push(endpoint(name, &rec.uid, ip));
                    }
                    Change::Terminating(_) => rec.times.endpoint_flip_at = Some(now),
                    Change::Remove(_) => {}
                }
            }
        }
        self.kube.update_endpoint_slice(NAMESPACE, SLICE, |s| {
            s.endpoints.extend(add);
            for change in &due {
                match change {
                    Change::Add(_) => {}
                    Change::Terminating(name) => {
                        for ep in s.endpoints.iter_mut().filter(|e| owner(e) == Some(name)) {
                            ep.conditions = Some(EndpointConditions {
                                ready: Some(false),
                                serving: Some(true),
                                terminating: Some(true),
                            });
                        }
                    }
                    Change::Remove(name) => s.endpoints.retain(|e| owner(e) != Some(name)),
                }
            }
        });
        for (ip, ready) in notify {
            if ready {
                self.alb.endpoint_ready(ip);
            } else {
                self.alb.endpoint_unready(ip);
            }
        }
    }
}

/// The endpoints controller: waits for the next due change, applies every
/// change due by then in one write. Runs until the cluster is dropped.
async fn endpoints_controller(world: Arc<World>) {
    loop {
        let next = lock(&world.queue).iter().map(|(at, _)| *at).min();
        match next {
            None => world.wake.notified().await,
            Some(at) => {
                tokio::select! {
                    () = sleep_until(at) => {}
                    () = world.wake.notified() => {}
                }
            }
        }
        let now = Instant::now();
        let due: Vec<Change> = {
            let mut queue = lock(&world.queue);
            let (due, later): (Vec<_>, Vec<_>) = queue.drain(..).partition(|(at, _)| *at <= now);
            *queue = later;
            due.into_iter().map(|(_, c)| c).collect()
        };
        if !due.is_empty() {
            world.sync(due);
            sleep(SYNC_TIME).await;
        }
    }
}

fn owner(ep: &Endpoint) -> Option<&String> {
    ep.target_ref.as_ref()?.name.as_ref()
}

fn endpoint(name: &str, uid: &str, ip: Ipv4Addr) -> Endpoint {
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(true),
            serving: Some(true),
            terminating: Some(false),
        }),
        target_ref: Some(ObjectReference {
            kind: Some("Pod".into()),
            name: Some(name.into()),
            namespace: Some(NAMESPACE.into()),
            uid: Some(uid.into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Kills and reaps the child when the hook is cut short (grace period over, run dropped).
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Five characters from Kubernetes' name-suffix alphabet.
fn pod_suffix(rng: &mut StdRng) -> String {
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect()
}

/// An argo-server stand-in: every request takes 20–50 ms; no SIGTERM handling.
async fn pod_server(ip: Ipv4Addr, name: &str, seed: u64) -> std::io::Result<Server> {
    let rng = Arc::new(Mutex::new(StdRng::seed_from_u64(seed)));
    let body = format!("{{\"pod\":\"{name}\"}}\n");
    let handler: http::Handler = Arc::new(move |_req| {
        let work = Duration::from_millis(lock(&rng).random_range(20..=50));
        let body = body.clone();
        Box::pin(async move {
            sleep(work).await;
            http::full(StatusCode::OK, "application/json", body)
        })
    });
    Server::start(SocketAddr::from((ip, POD_PORT)), handler).await
}

fn pod(name: &str, ip: Ipv4Addr, grace: Duration) -> serde_json::Result<Pod> {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"app.kubernetes.io/name": SERVICE}},
        "spec": {
            "terminationGracePeriodSeconds": grace.as_secs_f64().ceil() as i64,
            "containers": [{"name": "argo-server", "image": "quay.io/argoproj/argocli",
                            "ports": [{"containerPort": POD_PORT, "name": "web"}]}]
        },
        "status": {"phase": "Running", "podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}],
                   "conditions": [{"type": "Ready", "status": "True"}]}
    }))
}

fn service() -> serde_json::Result<Service> {
    serde_json::from_value(json!({
        "metadata": {"name": SERVICE, "namespace": NAMESPACE},
        "spec": {"selector": {"app.kubernetes.io/name": SERVICE},
                 "ports": [{"name": "web", "port": POD_PORT, "targetPort": POD_PORT}]}
    }))
}

fn empty_slice() -> serde_json::Result<EndpointSlice> {
    serde_json::from_value(json!({
        "metadata": {"name": SLICE, "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": SERVICE}},
        "addressType": "IPv4",
        "ports": [{"name": "web", "port": POD_PORT, "protocol": "TCP"}],
        "endpoints": []
    }))
}
