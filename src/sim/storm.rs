//! The storm benchmark: many pods deleted at once, every one running
//! drainwait against one rate-limited ELBv2.
//!
//! A [`Cluster`] with `drains` healthy pods; then ELBv2's `Describe*` calls
//! get AWS's shared token bucket (40 burst, 10/s refill, the refill divided
//! by the time scale so that a faster run sees the same contention), and
//! every pod is deleted at the same moment with the real drainwait binary as
//! its preStop hook. Counted afterwards from the fake's request log: drains
//! that failed (exit code not 0, or past deletionTimestamp − reserve),
//! DescribeTargetHealth calls and Throttling answers per drain, and how the
//! calls compare with a naive poller's `wait time / poll interval`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use super::cluster::{Cluster, ClusterConfig, Hook, PodTimes, Timings};
use super::elb::TokenBucket;

/// What the storm needs.
#[derive(Debug, Clone)]
pub struct StormOptions {
    /// Pods deleted at once.
    pub drains: usize,
    /// Time scale.
    pub scale: f64,
    /// Seed.
    pub seed: u64,
    /// Output directory (logs).
    pub out: PathBuf,
    /// The drainwait executable.
    pub hook_exe: PathBuf,
    /// Its arguments.
    pub hook_args: Vec<String>,
    /// Print progress lines on stdout.
    pub progress: bool,
}

/// One drain's numbers.
#[derive(Debug, Clone)]
pub struct Drain {
    /// The pod.
    pub pod: PodTimes,
    /// drainwait's exit code.
    pub exit: Option<i32>,
    /// Deletion → hook end.
    pub wait: Duration,
    /// Ended inside its deadline with exit 0.
    pub ok: bool,
    /// DescribeTargetHealth calls naming this pod's target.
    pub calls: usize,
    /// Of those, answered Throttling.
    pub throttled: usize,
}

/// The storm's results.
#[derive(Debug, Clone)]
pub struct StormReport {
    /// Every drain.
    pub drains: Vec<Drain>,
    /// The bucket in force.
    pub bucket: TokenBucket,
    /// The timings in force.
    pub timings: Timings,
    /// Deletion → deadline (grace − reserve).
    pub deadline: Duration,
    /// First deletion → last pod gone.
    pub elapsed: Duration,
    /// Throttling answers in total.
    pub throttled: usize,
}

impl StormReport {
    /// Drains that ended with exit 0 inside their deadline.
    pub fn ok(&self) -> usize {
        self.drains.iter().filter(|d| d.ok).count()
    }
    /// Mean DescribeTargetHealth calls per drain.
    pub fn mean_calls(&self) -> f64 {
        mean(self.drains.iter().map(|d| d.calls as f64))
    }
    /// Mean of each drain's wait / poll interval: a naive poller's call count.
    pub fn mean_naive_calls(&self) -> f64 {
        let poll = self.timings.poll_interval.as_secs_f64();
        mean(self.drains.iter().map(|d| d.wait.as_secs_f64() / poll))
    }
}

fn mean(v: impl Iterator<Item = f64>) -> f64 {
    let (sum, n) = v.fold((0.0, 0usize), |(s, n), x| (s + x, n + 1));
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Run the storm.
pub async fn run_storm(opts: &StormOptions) -> std::io::Result<StormReport> {
    let t = Timings::scaled(opts.scale);
    std::fs::create_dir_all(&opts.out)?;
    let log = opts.out.join("storm-drainwait.log");
    std::fs::write(&log, "")?;
    let cluster = Cluster::start(ClusterConfig {
        timings: t.clone(),
        seed: opts.seed,
        dir: opts.out.clone(),
        log: log.clone(),
    })
    .await?;
    let mut names = Vec::new();
    for _ in 0..opts.drains {
        names.push(cluster.start_pod("6b7c9d").await?);
    }
    let to_healthy = (t.endpoints_delay + t.controller_delay + t.health_check_delay) * 4
        + Duration::from_secs(5);
    cluster.wait_healthy(&names, to_healthy).await?;
    let bucket = TokenBucket {
        burst: 40.0,
        refill_per_sec: 10.0 / opts.scale,
    };
    cluster.elb().set_rate_limit(Some(bucket));
    if opts.progress {
        println!(
            "storm: {} healthy pods; deleting them all at once, each running drainwait (poll {:.1}s) against ELBv2 limited to {} burst, {:.0}/s",
            names.len(),
            t.poll_interval.as_secs_f64(),
            bucket.burst,
            bucket.refill_per_sec
        );
    }
    let hook = Hook::Drainwait {
        exe: opts.hook_exe.clone(),
        args: opts.hook_args.clone(),
    };
    let started = tokio::time::Instant::now();
    let results =
        futures::future::join_all(names.iter().map(|n| cluster.terminate(n, &hook))).await;
    let elapsed = started.elapsed();
    for r in results {
        r?;
    }

    // Attribute every DescribeTargetHealth call to the pod IPs it names.
    let mut calls: BTreeMap<String, (usize, usize)> = BTreeMap::new();
    let mut throttled = 0;
    for req in cluster.elb().requests() {
        if req.outcome == "Throttling" {
            throttled += 1;
        }
        if req.action != "DescribeTargetHealth" {
            continue;
        }
        for (id, _) in &req.targets {
            let e = calls.entry(id.clone()).or_default();
            e.0 += 1;
            if req.outcome == "Throttling" {
                e.1 += 1;
            }
        }
    }
    let deadline = t.grace.saturating_sub(t.shutdown_reserve);
    // Exit is seen by polling every 5 ms: allow that much past the deadline.
    let slack = Duration::from_millis(50);
    let drains = names
        .iter()
        .filter_map(|n| cluster.pod_times(n))
        .map(|pod| {
            let wait = match (pod.deleting_at, pod.hook_done_at) {
                (Some(a), Some(b)) => b.saturating_duration_since(a),
                _ => Duration::ZERO,
            };
            let (c, th) = calls.get(&pod.ip.to_string()).copied().unwrap_or_default();
            Drain {
                ok: pod.hook_exit == Some(0) && wait <= deadline + slack,
                exit: pod.hook_exit,
                wait,
                calls: c,
                throttled: th,
                pod,
            }
        })
        .collect();
    Ok(StormReport {
        drains,
        bucket,
        timings: t,
        deadline,
        elapsed,
        throttled,
    })
}

/// The storm's results as text.
pub fn summary(r: &StormReport) -> String {
    let mut s = String::new();
    let n = r.drains.len();
    let mut waits: Vec<f64> = r.drains.iter().map(|d| d.wait.as_secs_f64()).collect();
    waits.sort_by(f64::total_cmp);
    let pick = |q: f64| {
        waits
            .get(((waits.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    let max_calls = r.drains.iter().map(|d| d.calls).max().unwrap_or(0);
    let failed: Vec<String> = r
        .drains
        .iter()
        .filter(|d| !d.ok)
        .map(|d| {
            format!(
                "{} (exit {:?}, {:.1}s)",
                d.pod.name,
                d.exit,
                d.wait.as_secs_f64()
            )
        })
        .collect();
    let total_calls: usize = r.drains.iter().map(|d| d.calls).sum();
    let ratio = r.mean_calls() / r.mean_naive_calls().max(f64::EPSILON);
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "storm: {n} concurrent drains, ELBv2 Describe* token bucket {} burst / {:.0} per s",
        r.bucket.burst, r.bucket.refill_per_sec
    );
    let _ = writeln!(
        s,
        "  drains ok (exit 0 inside the deadline): {}/{n}; failed: {}",
        r.ok(),
        n - r.ok()
    );
    for f in &failed {
        let _ = writeln!(s, "    failed: {f}");
    }
    let _ = writeln!(
        s,
        "  drain time: min {:.1}s, median {:.1}s, p90 {:.1}s, max {:.1}s (deadline {:.1}s after deletion); all done in {:.1}s",
        pick(0.0),
        pick(0.5),
        pick(0.9),
        pick(1.0),
        r.deadline.as_secs_f64(),
        r.elapsed.as_secs_f64()
    );
    let _ = writeln!(
        s,
        "  DescribeTargetHealth: {total_calls} calls, {:.2} per drain (max {max_calls}); Throttling answers: {} ({:.2} per drain)",
        r.mean_calls(),
        r.throttled,
        r.throttled as f64 / n.max(1) as f64
    );
    let _ = writeln!(
        s,
        "  calls per drain vs wait / poll interval ({:.1}s): {:.2} vs {:.2} = {ratio:.2}x (goal <= 1.5x)",
        r.timings.poll_interval.as_secs_f64(),
        r.mean_calls(),
        r.mean_naive_calls()
    );
    s
}
