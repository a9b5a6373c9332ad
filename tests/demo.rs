//! The demo at small scale, through the library and through the real binary:
//! drainwait loses no request and lets each pod go soon after the emulated
//! ALB stopped routing to it; no hook loses requests; a fixed sleep loses
//! none but always waits the whole sleep.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use drainwait::sim::demo::{DemoOptions, Strategy, run_demo};

/// The two demos take both cores' worth of timing-sensitive work: one at a time.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const SCALE: &str = "0.05";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_meets_the_goals() {
    let _one_at_a_time = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let mut opts = DemoOptions::new(
        PathBuf::from(env!("CARGO_BIN_EXE_drainwait")),
        dir.path().to_path_buf(),
    );
    opts.pods = 2;
    opts.scale = SCALE.parse().expect("scale");
    opts.seed = 7;
    opts.rate = 100;
    opts.progress = false;
    let report = run_demo(&opts).await.expect("demo runs");
    let run = |s: Strategy| {
        report
            .runs
            .iter()
            .find(|r| r.strategy == s)
            .expect("strategy ran")
    };
    let (none, sleep, dw) = (
        run(Strategy::None),
        run(Strategy::Sleep),
        run(Strategy::Drainwait),
    );

    for r in &report.runs {
        assert_eq!(r.pods.len(), 2, "{}: every old pod replaced", r.label);
        assert!(
            r.requests() > 100,
            "{}: steady load, {} requests",
            r.label,
            r.requests()
        );
    }
    assert!(
        none.failed() > 0,
        "no hook: the LB still routes to the killed pod"
    );

    assert_eq!(sleep.failed(), 0, "sleep: {:?}", sleep.failure_kinds());
    for p in &sleep.pods {
        let term = p.termination().expect("terminated");
        assert!(term >= sleep.timings.sleep, "sleep waits it all: {term:?}");
    }

    assert_eq!(dw.failed(), 0, "drainwait: {:?}", dw.failure_kinds());
    for p in &dw.pods {
        assert_eq!(p.hook_exit, Some(0), "{}: {:?}", p.name, p.hook_outcome);
        let late = p
            .sigterm_after_lb_stop()
            .expect("LB stop and SIGTERM known");
        assert!(
            (0.0..=1.5).contains(&late),
            "{}: SIGTERM {late:+.3}s after the LB stopped routing",
            p.name
        );
        assert!(
            p.termination().expect("terminated") < sleep.timings.sleep,
            "faster than the sleep"
        );
    }
    assert!(
        dw.rollout < sleep.rollout,
        "{:?} vs {:?}",
        dw.rollout,
        sleep.rollout
    );

    let svg = std::fs::read_to_string(&report.plot).expect("plot written");
    assert!(
        svg.starts_with("<svg") && svg.contains("drainwait: 0 of"),
        "plot titles carry the numbers"
    );
    let log = std::fs::read_to_string(&report.log).expect("log written");
    assert_eq!(log.matches("drained after").count(), 2, "{log}");
}

/// Run `drainwait demo ARGS`, which must succeed within 90 s; its stdout.
async fn demo_ok(args: &[&str], out: &std::path::Path) -> String {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_drainwait"));
    cmd.arg("demo")
        .args(args)
        .arg("--out")
        .arg(out)
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(90), cmd.output())
        .await
        .expect("the demo ends by itself")
        .expect("run");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// One row of the printed table: (requests, failed).
fn row(stdout: &str, label: &str) -> (u64, u64) {
    let line = stdout
        .lines()
        .find(|l| l.starts_with(label) && l.contains('…'))
        .unwrap_or_else(|| panic!("no {label:?} row in:\n{stdout}"));
    let words = label.split_whitespace().count();
    let nums: Vec<u64> = line
        .split_whitespace()
        .skip(words)
        .take(2)
        .map(|w| w.parse().expect("number"))
        .collect();
    (nums[0], nums[1])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_command_prints_the_table() {
    let _one_at_a_time = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let out = dir.path().join("out");
    let stdout = demo_ok(
        &[
            "--pods",
            "2",
            "--time-scale",
            SCALE,
            "--seed",
            "7",
            "--rate",
            "100",
        ],
        &out,
    )
    .await;

    let (requests, failed) = row(&stdout, "no hook");
    assert!(requests > 100 && failed > 0, "{stdout}");
    let (requests, failed) = row(&stdout, "sleep 3.0s");
    assert!(requests > 100 && failed == 0, "{stdout}");
    let (requests, failed) = row(&stdout, "drainwait");
    assert!(requests > 100 && failed == 0, "{stdout}");
    assert!(
        stdout.contains("preStop hook ends: drainwait exit 0"),
        "timeline printed:\n{stdout}"
    );
    assert!(out.join("rollout.svg").is_file());
    // drainwait's own logs went to the file, not to the terminal.
    assert!(!stdout.contains("drained after"), "{stdout}");
    let log = std::fs::read_to_string(out.join("drainwait.log")).expect("log");
    assert!(log.contains("drained after"), "{log}");

    // Usage errors are caught before anything starts.
    let bad = Command::new(env!("CARGO_BIN_EXE_drainwait"))
        .args(["demo", "--time-scale", "3"])
        .output()
        .expect("run");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--time-scale"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn storm_bench_ends_every_drain_inside_its_deadline() {
    let _one_at_a_time = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("tmp");
    let stdout = demo_ok(
        &[
            "--bench",
            "storm",
            "--drains",
            "12",
            "--time-scale",
            "0.1",
            "--seed",
            "3",
        ],
        dir.path(),
    )
    .await;
    assert!(
        stdout.contains("drains ok (exit 0 inside the deadline): 12/12; failed: 0"),
        "{stdout}"
    );
    // Every drain polled at least once, and far less than a naive poller would.
    let per_drain: f64 = stdout
        .split("calls, ")
        .nth(1)
        .and_then(|s| s.split(" per drain").next())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no calls per drain in:\n{stdout}"));
    assert!((1.0..=10.0).contains(&per_drain), "{per_drain}: {stdout}");
}
