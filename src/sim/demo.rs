//! `drainwait demo`: a rolling restart under load, with and without drainwait.
//!
//! For each strategy (no preStop hook, the seed's fixed `sleep 60`,
//! drainwait) a fresh [`Cluster`] is started with the same seed, `--pods`
//! pods become healthy behind the ALB emulator, a [`Load`] sends steady
//! requests through it, and a rolling restart replaces every pod (maxSurge 1,
//! maxUnavailable 0: start a new pod, wait until it is healthy in the LB,
//! delete an old one, wait until it is gone, next). The load keeps going
//! until the LB has stopped routing to every old pod, so late failures are
//! counted too. Then: a table on stdout, the timeline of one drainwait
//! drain, and an SVG plot of failures over time in `--out`, next to the
//! drainwait log. `--bench storm` runs [`super::storm`] instead.
//!
//! Everything is bounded: every wait has a limit derived from the timings,
//! and the load stops by itself after a maximum duration.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::time::{Instant, sleep};

use super::cluster::{Cluster, ClusterConfig, Hook, PodTimes, Timings, signed_secs};
use super::load::{Load, LoadConfig, LoadResult};
use super::plot::{self, Marker, Panel};
use super::storm::{self, StormOptions};

/// Options of `drainwait demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Pods in the Deployment; each is replaced once.
    #[arg(long, env = "DRAINWAIT_DEMO_PODS", default_value_t = 3)]
    pub pods: usize,
    /// Multiply every cluster delay by this: 1.0 = real cluster timings, 0.1 = ten times faster.
    #[arg(long, env = "DRAINWAIT_DEMO_TIME_SCALE", default_value_t = 0.05)]
    pub time_scale: f64,
    /// Seed of the simulated delays: the same seed gives the same run.
    #[arg(long, env = "DRAINWAIT_DEMO_SEED", default_value_t = 42)]
    pub seed: u64,
    /// Directory for the plot and drainwait's logs [default: $TMPDIR/drainwait-demo].
    #[arg(long, env = "DRAINWAIT_DEMO_OUT")]
    pub out: Option<PathBuf>,
    /// Requests per second through the load balancer.
    #[arg(long, env = "DRAINWAIT_DEMO_RATE", default_value_t = 200)]
    pub rate: u32,
    /// preStop strategies to compare, comma separated.
    #[arg(
        long,
        env = "DRAINWAIT_DEMO_STRATEGIES",
        value_enum,
        value_delimiter = ',',
        default_value = "none,sleep,drainwait"
    )]
    pub strategies: Vec<Strategy>,
    /// Run a benchmark: `rollout` (the same rollout, at the scale given) or `storm` (concurrent drains, throttled ELBv2).
    #[arg(long, env = "DRAINWAIT_DEMO_BENCH", value_enum)]
    pub bench: Option<Bench>,
    /// Storm: how many pods are deleted at once.
    #[arg(long, env = "DRAINWAIT_DEMO_DRAINS", default_value_t = 100)]
    pub drains: usize,
    /// The drainwait executable the hook runs [default: this executable].
    #[arg(long, env = "DRAINWAIT_DEMO_HOOK_BINARY")]
    pub hook_binary: Option<PathBuf>,
}

/// A preStop strategy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Strategy {
    /// No preStop hook: SIGTERM at once.
    None,
    /// The seed's `preStop: sleep 60`, time-scaled.
    Sleep,
    /// The real drainwait binary as the hook.
    Drainwait,
}

/// Which benchmark.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Bench {
    /// The demo's rolling restart, meant for more pods and a larger time scale.
    Rollout,
    /// Many pods deleted at once, each polling a rate-limited ELBv2.
    Storm,
}

/// What a demo run needs, checked.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Pods to replace.
    pub pods: usize,
    /// Time scale.
    pub scale: f64,
    /// Seed.
    pub seed: u64,
    /// Requests per second.
    pub rate: u32,
    /// Strategies, in order.
    pub strategies: Vec<Strategy>,
    /// Output directory (created).
    pub out: PathBuf,
    /// The drainwait executable and its arguments (`["wait"]`).
    pub hook_exe: PathBuf,
    /// Arguments of the hook executable.
    pub hook_args: Vec<String>,
    /// Print progress lines on stdout.
    pub progress: bool,
}

impl DemoOptions {
    /// Defaults of the demo (3 pods, scale 0.05, 200 req/s, all strategies) with this hook binary.
    pub fn new(hook_exe: PathBuf, out: PathBuf) -> DemoOptions {
        DemoOptions {
            pods: 3,
            scale: 0.05,
            seed: 42,
            rate: 200,
            strategies: vec![Strategy::None, Strategy::Sleep, Strategy::Drainwait],
            out,
            hook_exe,
            hook_args: vec!["wait".into()],
            progress: true,
        }
    }

    fn hook(&self, s: Strategy, t: &Timings) -> Hook {
        match s {
            Strategy::None => Hook::None,
            Strategy::Sleep => Hook::Sleep(t.sleep),
            Strategy::Drainwait => Hook::Drainwait {
                exe: self.hook_exe.clone(),
                args: self.hook_args.clone(),
            },
        }
    }
}

/// One strategy's rollout.
#[derive(Debug, Clone)]
pub struct RolloutRun {
    /// The strategy.
    pub strategy: Strategy,
    /// Its label, e.g. `sleep 6s`.
    pub label: String,
    /// The timings in force.
    pub timings: Timings,
    /// Every request of the load.
    pub load: LoadResult,
    /// First new pod started → last old pod gone.
    pub rollout: Duration,
    /// The old pods, in termination order.
    pub pods: Vec<PodTimes>,
}

impl RolloutRun {
    /// Requests sent.
    pub fn requests(&self) -> usize {
        self.load.requests()
    }
    /// Requests that failed (no answer or 5xx).
    pub fn failed(&self) -> usize {
        self.load.failed()
    }
    /// Mean deletion → SIGTERM.
    pub fn mean_termination(&self) -> Duration {
        let all: Vec<Duration> = self.pods.iter().filter_map(PodTimes::termination).collect();
        let n = u32::try_from(all.len()).unwrap_or(u32::MAX).max(1);
        all.iter().sum::<Duration>() / n
    }
    /// (min, max) of SIGTERM minus the LB's stop of routing, seconds.
    pub fn sigterm_vs_lb_stop(&self) -> Option<(f64, f64)> {
        let v: Vec<f64> = self
            .pods
            .iter()
            .filter_map(PodTimes::sigterm_after_lb_stop)
            .collect();
        let min = v.iter().copied().reduce(f64::min)?;
        let max = v.iter().copied().reduce(f64::max)?;
        Some((min, max))
    }
    /// Failures by kind (`502`, `reset`…), most frequent first.
    pub fn failure_kinds(&self) -> Vec<(String, usize)> {
        let mut m = std::collections::BTreeMap::<String, usize>::new();
        for o in self.load.outcomes.iter().filter(|o| o.failed()) {
            *m.entry(o.kind.clone()).or_default() += 1;
        }
        let mut v: Vec<(String, usize)> = m.into_iter().collect();
        v.sort_by_key(|(_, n)| std::cmp::Reverse(*n));
        v
    }
}

/// The whole demo.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// One run per strategy.
    pub runs: Vec<RolloutRun>,
    /// The SVG plot.
    pub plot: PathBuf,
    /// drainwait's own logs.
    pub log: PathBuf,
}

/// Run every strategy's rollout, write the plot, return the numbers.
pub async fn run_demo(opts: &DemoOptions) -> std::io::Result<DemoReport> {
    std::fs::create_dir_all(&opts.out)?;
    let log = opts.out.join("drainwait.log");
    std::fs::write(&log, "")?;
    let mut runs = Vec::new();
    for &s in &opts.strategies {
        runs.push(rollout(opts, s, &log).await?);
    }
    let plot = opts.out.join("rollout.svg");
    std::fs::write(&plot, plot_runs(opts, &runs))?;
    Ok(DemoReport { runs, plot, log })
}

fn say(opts: &DemoOptions, line: &str) {
    if opts.progress {
        println!("{line}");
    }
}

/// One strategy's rolling restart under load.
pub async fn rollout(
    opts: &DemoOptions,
    strategy: Strategy,
    log: &Path,
) -> std::io::Result<RolloutRun> {
    let t = Timings::scaled(opts.scale);
    let hook = opts.hook(strategy, &t);
    let label = match strategy {
        Strategy::None => "no hook".to_string(),
        Strategy::Sleep => format!("sleep {}", secs(t.sleep)),
        Strategy::Drainwait => "drainwait".to_string(),
    };
    let cluster = Cluster::start(ClusterConfig {
        timings: t.clone(),
        seed: opts.seed,
        dir: opts.out.clone(),
        log: log.to_path_buf(),
    })
    .await?;
    // Limits: generous multiples of what each step needs.
    let to_healthy = (t.endpoints_delay + t.controller_delay + t.health_check_delay) * 4
        + Duration::from_secs(2);
    let to_unrouted =
        t.endpoints_delay + t.controller_delay + t.propagation.1 + Duration::from_secs(2);
    let per_pod = to_healthy + t.grace + Duration::from_secs(1);
    let bound =
        per_pod * u32::try_from(opts.pods).unwrap_or(u32::MAX) + to_healthy + to_unrouted * 2;

    let mut old = Vec::new();
    for _ in 0..opts.pods {
        old.push(cluster.start_pod("6b7c9d").await?);
    }
    cluster.wait_healthy(&old, to_healthy).await?;
    say(
        opts,
        &format!(
            "[{label}] {} pods healthy behind the load balancer; starting {} req/s and the rolling restart",
            old.len(),
            opts.rate
        ),
    );
    let load = Load::start(
        cluster.alb().addr(),
        LoadConfig {
            rate: opts.rate,
            timeout: Duration::from_secs(2),
            max_duration: bound,
            max_requests: u64::from(opts.rate) * bound.as_secs().max(1),
        },
    );
    // A short calm stretch first, so the plot shows the normal rate.
    sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    for (i, name) in old.iter().enumerate() {
        let new = cluster.start_pod("85f4dc").await?;
        cluster
            .wait_healthy(std::slice::from_ref(&new), to_healthy)
            .await?;
        cluster.terminate(name, &hook).await?;
        if let Some(p) = cluster.pod_times(name) {
            let term = p.termination().map(secs).unwrap_or_default();
            let outcome = p.hook_outcome.unwrap_or_default();
            say(
                opts,
                &format!(
                    "[{label}] {}/{}: {new} healthy; {name} deleted, SIGTERM after {term} (hook: {outcome})",
                    i + 1,
                    old.len()
                ),
            );
        }
    }
    let rollout = started.elapsed();
    // Until the LB has let go of every old pod: a no-hook run fails until then.
    cluster.wait_unrouted(&old, to_unrouted).await;
    sleep(Duration::from_millis(300)).await;
    let load = load.stop().await?;
    let pods: Vec<PodTimes> = old.iter().filter_map(|n| cluster.pod_times(n)).collect();
    let run = RolloutRun {
        strategy,
        label,
        timings: t,
        load,
        rollout,
        pods,
    };
    say(
        opts,
        &format!(
            "[{}] done: {} requests, {} failed, rollout {}",
            run.label,
            run.requests(),
            run.failed(),
            secs(run.rollout)
        ),
    );
    Ok(run)
}

/// Seconds with one decimal, e.g. `2.3s`.
fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

fn signed(v: f64) -> String {
    format!("{v:+.2}s")
}

/// The results table.
pub fn table(runs: &[RolloutRun]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{:<12} {:>9} {:>7} {:>9} {:>9}   SIGTERM after the LB stopped routing (min … max)",
        "strategy", "requests", "failed", "rollout", "per pod"
    );
    for r in runs {
        let lateness = r
            .sigterm_vs_lb_stop()
            .map(|(lo, hi)| format!("{} … {}", signed(lo), signed(hi)))
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            s,
            "{:<12} {:>9} {:>7} {:>9} {:>9}   {}",
            r.label,
            r.requests(),
            r.failed(),
            secs(r.rollout),
            secs(r.mean_termination()),
            lateness
        );
    }
    s
}

/// One sentence comparing drainwait with the other strategies, when they ran.
pub fn verdict(runs: &[RolloutRun]) -> Option<String> {
    let find = |s: Strategy| runs.iter().find(|r| r.strategy == s);
    let dw = find(Strategy::Drainwait)?;
    let mut v = format!(
        "drainwait: {} failed requests of {}, {} per pod",
        dw.failed(),
        dw.requests(),
        secs(dw.mean_termination())
    );
    if let Some(none) = find(Strategy::None) {
        let _ = write!(
            v,
            "; without a hook {} of {} failed",
            none.failed(),
            none.requests()
        );
    }
    if let Some(sleep) = find(Strategy::Sleep) {
        let speedup = sleep.rollout.as_secs_f64() / dw.rollout.as_secs_f64().max(1e-3);
        let _ = write!(
            v,
            "; the rollout took {} instead of {} with {} ({speedup:.1}x faster)",
            secs(dw.rollout),
            secs(sleep.rollout),
            sleep.label
        );
    }
    Some(v + ".")
}

/// The timeline of one drain, in ms after the pod's deletion, in time order.
pub fn timeline(run: &RolloutRun, pod: &PodTimes) -> String {
    let Some(t0) = pod.deleting_at else {
        return String::new();
    };
    let t = &run.timings;
    let lb = pod.lb.as_ref();
    let mut events: Vec<(Instant, String)> = vec![(
        t0,
        format!(
            "pod deleted: deletionTimestamp = now + {} grace; kubelet starts the preStop hook",
            secs(t.grace)
        ),
    )];
    if let Some(at) = pod.endpoint_flip_at {
        events.push((
            at,
            "endpoints controller: endpoint ready=false, terminating=true".into(),
        ));
    }
    if let Some(at) = lb.and_then(|l| l.draining_at) {
        events.push((
            at,
            "LB controller deregisters the target: ELBv2 says draining".into(),
        ));
    }
    if let (Some(stop), Some(drain)) = (
        lb.and_then(|l| l.stops_routing_at),
        lb.and_then(|l| l.draining_at),
    ) {
        let real = (stop - drain).as_secs_f64() / t.scale;
        events.push((
            stop,
            format!(
                "ALB stops routing new requests to it ({real:.1} s after draining at cluster scale; observed 2-17 s)"
            ),
        ));
    }
    if let Some(last) = lb.and_then(|l| l.last_routed_at) {
        events.push((last, "(last request the ALB routed to it)".into()));
    }
    if let Some(at) = pod.hook_done_at {
        let outcome = pod.hook_outcome.clone().unwrap_or_default();
        events.push((at, format!("preStop hook ends: drainwait {outcome}")));
    }
    if let Some(at) = pod.sigterm_at {
        events.push((at, "SIGTERM: the pod exits at once".into()));
    }
    // Stable: events at the same instant keep the causal order above.
    events.sort_by_key(|(at, _)| *at);
    let mut s = String::new();
    let _ = writeln!(
        s,
        "Timeline of one drain ({}, {}), ms after its deletion:",
        pod.name, run.label
    );
    for (at, what) in events {
        let ms = (signed_secs(at, t0) * 1000.0).round() as i64;
        let _ = writeln!(s, "{ms:>7}  {what}");
    }
    s
}

fn plot_runs(opts: &DemoOptions, runs: &[RolloutRun]) -> String {
    let panels: Vec<Panel> = runs
        .iter()
        .map(|r| {
            let start = r.load.started;
            let at = |i: Instant| signed_secs(i, start);
            let mut markers = Vec::new();
            for p in &r.pods {
                if let Some(d) = p.deleting_at {
                    markers.push((at(d), Marker::Deleted));
                }
                if let Some(stop) = p.lb.as_ref().and_then(|l| l.stops_routing_at) {
                    markers.push((at(stop), Marker::LbStopped));
                }
                if let Some(term) = p.sigterm_at {
                    markers.push((at(term), Marker::Sigterm));
                }
            }
            Panel {
                title: format!(
                    "{}: {} of {} requests failed, rollout {}",
                    r.label,
                    r.failed(),
                    r.requests(),
                    secs(r.rollout)
                ),
                requests: r
                    .load
                    .outcomes
                    .iter()
                    .map(|o| (o.at.as_secs_f64(), o.failed()))
                    .collect(),
                markers,
            }
        })
        .collect();
    let title = format!(
        "Rolling restart of {} pods under {} req/s (time scale {}, seed {})",
        opts.pods, opts.rate, opts.scale, opts.seed
    );
    plot::svg(&title, &panels)
}

/// Check the command line, run, print. Returns the exit code: 0 when the
/// demo ran, 2 for an invalid value, 1 when the simulated world failed.
pub async fn cli(args: DemoArgs) -> u8 {
    if let Err(e) = check(&args) {
        eprintln!("drainwait demo: {e}");
        return 2;
    }
    match cli_inner(args).await {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("drainwait demo: {e}");
            1
        }
    }
}

fn check(args: &DemoArgs) -> Result<(), String> {
    if !(args.time_scale > 0.0 && args.time_scale <= 1.0) {
        return Err(format!(
            "invalid --time-scale {}: expected a number in (0, 1], like 0.1",
            args.time_scale
        ));
    }
    if !(1..=120).contains(&args.pods) {
        return Err(format!("invalid --pods {}: expected 1 to 120", args.pods));
    }
    if !(1..=240).contains(&args.drains) {
        return Err(format!(
            "invalid --drains {}: expected 1 to 240",
            args.drains
        ));
    }
    if !(1..=2000).contains(&args.rate) {
        return Err(format!(
            "invalid --rate {}: expected 1 to 2000 requests per second",
            args.rate
        ));
    }
    Ok(())
}

async fn cli_inner(args: DemoArgs) -> Result<(), String> {
    let hook_exe = match args.hook_binary {
        Some(p) => p,
        None => std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?,
    };
    let out = args
        .out
        .unwrap_or_else(|| std::env::temp_dir().join("drainwait-demo"));
    if args.bench == Some(Bench::Storm) {
        let opts = StormOptions {
            drains: args.drains,
            scale: args.time_scale,
            seed: args.seed,
            out,
            hook_exe,
            hook_args: vec!["wait".into()],
            progress: true,
        };
        let report = storm::run_storm(&opts).await.map_err(|e| e.to_string())?;
        print!("{}", storm::summary(&report));
        return Ok(());
    }
    let mut strategies = args.strategies;
    strategies.dedup();
    let opts = DemoOptions {
        pods: args.pods,
        scale: args.time_scale,
        seed: args.seed,
        rate: args.rate,
        strategies,
        out,
        hook_exe,
        hook_args: vec!["wait".into()],
        progress: true,
    };
    let t = Timings::scaled(opts.scale);
    let what = if args.bench.is_some() {
        "benchmark"
    } else {
        "demo"
    };
    println!(
        "drainwait {what}: rolling restart of {} pods under {} req/s, time scale {} (1 s here = {:.0} s in a cluster), seed {}",
        opts.pods,
        opts.rate,
        opts.scale,
        1.0 / opts.scale,
        opts.seed
    );
    println!(
        "simulated: API server, EndpointSlice and LB controllers, ELBv2, and an ALB that keeps routing to a draining target for {}-{} (2-17 s scaled)",
        secs(t.propagation.0),
        secs(t.propagation.1)
    );
    println!(
        "drainwait: poll {}, LB settle {}, endpoints settle {}; grace period {}; pods are real HTTP servers on 127.x.y.z:{}",
        secs(t.poll_interval),
        secs(t.lb_settle),
        secs(t.endpoints_settle),
        secs(t.grace),
        super::cluster::POD_PORT
    );
    println!();
    let report = run_demo(&opts).await.map_err(|e| e.to_string())?;
    println!();
    print!("{}", table(&report.runs));
    println!(
        "  (rollout: first new pod started → last old pod gone; per pod: deletion → SIGTERM, mean)"
    );
    for r in &report.runs {
        let kinds = r.failure_kinds();
        if !kinds.is_empty() {
            let list: Vec<String> = kinds.iter().map(|(k, n)| format!("{k} ×{n}")).collect();
            println!("  {} failures: {}", r.label, list.join(", "));
        }
    }
    if let Some(run) = report
        .runs
        .iter()
        .find(|r| r.strategy == Strategy::Drainwait)
        && let Some(pod) = run.pods.first()
    {
        println!();
        print!("{}", timeline(run, pod));
    }
    if let Some(v) = verdict(&report.runs) {
        println!();
        println!("{v}");
    }
    println!();
    println!("plot: {}", report.plot.display());
    println!("drainwait logs: {}", report.log.display());
    Ok(())
}
