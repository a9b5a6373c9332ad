//! Benchmark of one drain: reaction latency, peak memory, requests per drain.
//!
//! Runs the `drainwait` binary named by `DRAINWAIT_BIN` (default: the static
//! release build) against the simulated API server and ELBv2 on loopback:
//!
//! 1. **Reaction latency**: settle 0, no LB; once drainwait's watch is open,
//!    flip the pod's endpoint and time flip → process exit. N runs.
//! 2. **Peak RSS**: `VmHWM` from /proc/PID/status, sampled every 5 ms until exit.
//! 3. **Requests per drain**: the fakes' request logs for an endpoints-only
//!    drain and for a drain with a TargetGroupBinding (ELBv2 polled every 2 s,
//!    target draining 5 s after the flip).
//!
//! Prints a Markdown table for bench/RESULTS.md. Bounded: fixed run counts,
//! every wait has a limit.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use drainwait::sim::elb::FakeElb;
use drainwait::sim::kube::FakeKube;
use serde_json::json;

const NS: &str = "argo";
const POD: &str = "argo-server-0";
const UID: &str = "uid-0";
const IP: &str = "10.1.2.3";
const TG: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/argo/0123456789abcdef";

struct World {
    kube: FakeKube,
    elb: FakeElb,
    dir: Scratch,
    kubeconfig: PathBuf,
}

/// A scratch directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn world() -> Result<World, Box<dyn std::error::Error>> {
    let kube = FakeKube::start().await?;
    let elb = FakeElb::start().await?;
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir =
        Scratch(std::env::temp_dir().join(format!("drainwait-bench-{}-{n}", std::process::id())));
    std::fs::create_dir_all(&dir.0)?;
    let kubeconfig = dir.0.join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig, NS)?;
    kube.put_pod(serde_json::from_value(json!({
        "metadata": {"name": POD, "namespace": NS, "uid": UID},
        "status": {"podIP": IP, "podIPs": [{"ip": IP}]}
    }))?);
    kube.mark_deleting(NS, POD, Duration::from_secs(60));
    kube.put_service(serde_json::from_value(json!({
        "metadata": {"name": "argo-server", "namespace": NS},
        "spec": {"ports": [{"name": "web", "port": 80, "targetPort": 2746}]}
    }))?);
    kube.put_endpoint_slice(serde_json::from_value(json!({
        "metadata": {"name": "argo-server-1", "namespace": NS, "labels": {"kubernetes.io/service-name": "argo-server"}},
        "addressType": "IPv4",
        "ports": [{"name": "web", "port": 2746}],
        "endpoints": [{"addresses": [IP], "conditions": {"ready": true}, "targetRef": {"kind": "Pod", "name": POD, "uid": UID}}]
    }))?);
    Ok(World {
        kube,
        elb,
        dir,
        kubeconfig,
    })
}

fn flip(w: &World) {
    w.kube.update_endpoint_slice(NS, "argo-server-1", |s| {
        for ep in &mut s.endpoints {
            let c = ep.conditions.get_or_insert_with(Default::default);
            c.ready = Some(false);
            c.terminating = Some(true);
        }
    });
}

fn vm_hwm_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

struct Measured {
    code: Option<i32>,
    latency: Option<Duration>,
    peak_kib: u64,
    kube_requests: usize,
    elb_requests: usize,
}

/// One drain. `flip_after_watch`: flip as soon as the watch is open (latency run).
async fn drain(bin: &PathBuf, with_aws: bool) -> Result<Measured, Box<dyn std::error::Error>> {
    let w = world().await?;
    if with_aws {
        w.elb.add_target_group(TG, "argo", 2746);
        w.elb.register(TG, IP, 2746);
        w.kube.put_target_group_binding(
            NS,
            "argo-tgb",
            json!({"targetGroupARN": TG, "targetType": "ip", "serviceRef": {"name": "argo-server", "port": 80}}),
        );
    }
    let mut child = tokio::process::Command::new(bin)
        .env_clear()
        .env("KUBECONFIG", &w.kubeconfig)
        .env("HOME", &w.dir.0)
        .env("DRAINWAIT_POD_NAME", POD)
        .env("DRAINWAIT_POD_NAMESPACE", NS)
        .env("DRAINWAIT_LOG_TO_PID1", "false")
        .env("DRAINWAIT_ENDPOINTS_SETTLE", "0s")
        .env("DRAINWAIT_LB_SETTLE", if with_aws { "1s" } else { "0s" })
        .env("DRAINWAIT_LB", if with_aws { "aws" } else { "none" })
        .env("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", w.elb.url())
        .env("AWS_ACCESS_KEY_ID", "AKIDSIMULATED0000001")
        .env("AWS_SECRET_ACCESS_KEY", "sim")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = child.id().unwrap_or(0);
    let started = Instant::now();
    // Wait (bounded) until the watch request is in: drainwait is then waiting on events.
    while !w
        .kube
        .requests()
        .iter()
        .any(|r| r.path.contains("endpointslices") && r.query.contains("watch="))
    {
        if started.elapsed() > Duration::from_secs(10) {
            return Err("drainwait never opened its watch".into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut peak = vm_hwm_kib(pid).unwrap_or(0);
    let flipped = Instant::now();
    flip(&w);
    if with_aws {
        w.elb.schedule(
            TG,
            IP,
            2746,
            vec![(Duration::from_secs(5), "draining".into(), None)],
        );
    }
    let limit = Instant::now() + Duration::from_secs(30);
    let code = loop {
        if let Some(status) = child.try_wait()? {
            break status.code();
        }
        if Instant::now() > limit {
            child.kill().await?;
            return Err("drainwait did not exit within 30 s".into());
        }
        peak = peak.max(vm_hwm_kib(pid).unwrap_or(0));
        tokio::time::sleep(Duration::from_millis(1)).await;
    };
    Ok(Measured {
        code,
        latency: Some(flipped.elapsed()),
        peak_kib: peak,
        kube_requests: w.kube.requests().len(),
        elb_requests: w.elb.requests().len(),
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bin = PathBuf::from(
        std::env::var("DRAINWAIT_BIN")
            .unwrap_or_else(|_| "target/x86_64-unknown-linux-gnu/release/drainwait".into()),
    );
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(30);
    if !bin.exists() {
        return Err(format!(
            "{} not found: build it first (scripts/build-static.sh) or set DRAINWAIT_BIN",
            bin.display()
        )
        .into());
    }
    let mut latencies = Vec::new();
    let mut peaks = Vec::new();
    let mut kube_reqs = Vec::new();
    for i in 0..runs {
        let m = drain(&bin, false).await?;
        if m.code != Some(0) {
            return Err(format!("run {i}: exit {:?}", m.code).into());
        }
        latencies.extend(m.latency);
        peaks.push(m.peak_kib);
        kube_reqs.push(m.kube_requests);
        eprint!(".");
    }
    eprintln!();
    let aws = drain(&bin, true).await?;
    if aws.code != Some(0) {
        return Err(format!("aws run: exit {:?}", aws.code).into());
    }
    latencies.sort();
    let size = std::fs::metadata(&bin)?.len();
    println!("| metric | value | target |");
    println!("|---|---|---|");
    println!("| binary | `{}` | |", bin.display());
    println!(
        "| binary size | {} bytes ({:.2} MiB) | ≤ 10 MiB |",
        size,
        size as f64 / 1048576.0
    );
    println!(
        "| reaction latency, flip → exit ({} runs) | median {}, p90 {}, max {} | median ≤ 50 ms |",
        latencies.len(),
        ms(percentile(&latencies, 0.5)),
        ms(percentile(&latencies, 0.9)),
        ms(*latencies.last().unwrap_or(&Duration::ZERO))
    );
    println!(
        "| peak RSS during a wait (VmHWM) | max {:.1} MiB | ≤ 20 MB |",
        *peaks.iter().max().unwrap_or(&0) as f64 / 1024.0
    );
    println!(
        "| Kubernetes requests, endpoints-only drain | {} | |",
        kube_reqs.iter().max().unwrap_or(&0)
    );
    println!(
        "| Kubernetes / AWS requests, drain with one TargetGroupBinding (draining 5 s after the flip, poll 2 s) | {} / {} | |",
        aws.kube_requests, aws.elb_requests
    );
    println!(
        "| peak RSS, drain with AWS | {:.1} MiB | ≤ 20 MB |",
        aws.peak_kib as f64 / 1024.0
    );
    Ok(())
}
