//! `drainwait serve`, the real binary against the fake API server and ELBv2 on loopback:
//! one shared drain per pod, signals, hostile HTTP, and `/metrics`.
//!
//! Each test runs the binary with [`World::run_with`] on a free loopback port
//! and drives it from a concurrent script over raw TCP (so that malformed
//! requests can be sent); the script ends the server with a signal.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::time::{sleep, timeout};

const LB_NONE: (&str, &str) = ("DRAINWAIT_LB", "none");

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A loopback address with a port that was free a moment ago.
fn free_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    drop(l);
    addr.to_string()
}

fn kill(pid: u32, sig: &str) {
    let _ = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status();
}

/// An HTTP answer: status code (0 when the server sent none) and body.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: u16,
    body: String,
}

/// Send raw bytes, read until the server closes (it serves one request per connection).
async fn raw(addr: &str, request: &[u8]) -> Answer {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    // A server that answers early (431) may close before all of it is written.
    let _ = s.write_all(request).await;
    // No half-close: hyper takes a client's EOF as hanging up and drops the answer.
    let mut buf = Vec::new();
    let _ = timeout(Duration::from_secs(30), s.read_to_end(&mut buf))
        .await
        .expect("server closes the connection");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Answer { status, body }
}

async fn get(addr: &str, path: &str) -> Answer {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: kube-lifecycle/1.33\r\n\r\n")
            .as_bytes(),
    )
    .await
}

/// Wait until the server answers /healthz.
async fn ready(addr: &str) {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(15) {
        if TcpStream::connect(addr).await.is_ok() {
            let a = get(addr, "/healthz").await;
            assert_eq!((a.status, a.body.as_str()), (200, "ok"));
            return;
        }
        sleep(ms(50)).await;
    }
    panic!("drainwait serve did not listen on {addr}");
}

/// Start `drainwait serve` on a free port with `extra` env; `script(addr, pid)` runs
/// against it and must end it (signal); returns the script's result and the run.
async fn serve<T, F: std::future::Future<Output = T>>(
    w: &World,
    extra: &[(&str, &str)],
    script: impl FnOnce(String, u32) -> F,
) -> (T, Run) {
    let addr = free_addr();
    let mut env = vec![("DRAINWAIT_LISTEN", addr.as_str())];
    env.extend_from_slice(extra);
    let (tx, rx) = oneshot::channel();
    let (run, out) = tokio::join!(
        w.run_with(&["serve"], &env, move |pid| {
            let _ = tx.send(pid);
        }),
        async {
            let pid = rx.await.expect("pid");
            ready(&addr).await;
            script(addr.clone(), pid).await
        }
    );
    (out, run)
}

fn requests_to(w: &World, f: impl Fn(&drainwait::sim::kube::RequestRecord) -> bool) -> usize {
    w.kube.requests().iter().filter(|r| f(r)).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_drain_and_metrics_count_it() {
    let w = &World::new().await;
    let ((first, second, later, metrics), run) = serve(w, &[LB_NONE], |addr, pid| async move {
        let (a, b, ()) = tokio::join!(
            get(&addr, "/drain"),
            async {
                sleep(ms(150)).await;
                get(&addr, "/drain").await
            },
            async {
                sleep(ms(800)).await;
                w.flip_endpoint();
            }
        );
        // After the end: the kept result, at once.
        let t = Instant::now();
        let later = get(&addr, "/drain").await;
        assert!(
            t.elapsed() < ms(500),
            "cached result took {:?}",
            t.elapsed()
        );
        let metrics = get(&addr, "/metrics").await;
        kill(pid, "-TERM");
        (a, b, later, metrics)
    })
    .await;
    run.assert_code(0);

    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(first, second, "both callers get the same drain's JSON");
    assert_eq!(first, later, "a later caller gets the kept result");
    let summary: serde_json::Value = serde_json::from_str(&first.body).expect("JSON summary");
    assert_eq!(summary["outcome"], "drained", "{summary}");
    assert_eq!(summary["exit_code"], 0);
    assert_eq!(summary["pod"], format!("{NS}/{POD}"));
    assert!(
        summary["seconds"].as_f64().unwrap_or_default() >= 0.8,
        "{summary}"
    );

    // One drain: one pod GET, one EndpointSlice list, one Event.
    assert_eq!(
        requests_to(w, |r| r.method == "GET"
            && r.path.ends_with(&format!("/pods/{POD}"))),
        1
    );
    assert_eq!(
        requests_to(w, |r| r.path.contains("endpointslices")
            && !r.query.contains("watch=")),
        1
    );
    assert_eq!(w.event_reasons(), vec!["Drained"]);

    // /metrics parses as Prometheus text and counts what happened.
    assert_eq!(metrics.status, 200);
    for l in metrics.body.lines() {
        // Every line is a HELP, a TYPE or a sample whose value parses: nothing the parser would skip.
        match prometheus_parse::LineInfo::parse(l) {
            prometheus_parse::LineInfo::Sample { value, .. } => {
                assert!(value == "+Inf" || value.parse::<f64>().is_ok(), "{l}")
            }
            prometheus_parse::LineInfo::Doc { .. } | prometheus_parse::LineInfo::Type { .. } => {}
            other => panic!("not Prometheus text format: {l:?} ({other:?})"),
        }
    }
    let lines = metrics.body.lines().map(|l| Ok(l.to_string()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    let value = |name: &str, labels: &[(&str, &str)]| -> f64 {
        scrape
            .samples
            .iter()
            .filter(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .map(|s| match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => 0.0,
            })
            .sum()
    };
    assert_eq!(
        value("drainwait_drains_total", &[("outcome", "drained")]),
        1.0,
        "{}",
        metrics.body
    );
    assert_eq!(value("drainwait_drain_running", &[]), 0.0);
    assert_eq!(
        value(
            "drainwait_kubernetes_requests_total",
            &[("resource", "pods")]
        ),
        1.0,
        "{}",
        metrics.body
    );
    assert!(value("drainwait_kubernetes_requests_total", &[]) >= 1.0);
    assert_eq!(
        value(
            "drainwait_http_requests_total",
            &[("path", "/drain"), ("code", "200")]
        ),
        3.0,
        "{}",
        metrics.body
    );
    let hist = scrape
        .samples
        .iter()
        .find(|s| s.metric == "drainwait_drain_duration_seconds")
        .expect("drain histogram");
    match &hist.value {
        prometheus_parse::Value::Histogram(buckets) => {
            assert_eq!(buckets.last().map(|b| b.count), Some(1.0), "{buckets:?}");
        }
        other => panic!("drain duration is not a histogram: {other:?}"),
    }
    let gates: Vec<String> = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "drainwait_gate_duration_seconds")
        .map(|s| {
            format!(
                "{}/{}",
                s.labels.get("gate").unwrap_or(""),
                s.labels.get("state").unwrap_or("")
            )
        })
        .collect();
    assert!(
        gates.contains(&"endpoints/passed".to_string())
            && gates.contains(&"aws/skipped".to_string()),
        "{gates:?}\n{}",
        metrics.body
    );

    run.assert_logged(&["starting the drain", "joining"]);
    run.assert_logged(&["no drain running"]);
    for secret in [
        "sim-token",
        "sim-secret-key-do-not-print",
        "sim-session-token-do-not-print",
    ] {
        assert!(
            !run.stderr.contains(secret) && !metrics.body.contains(secret),
            "{secret} leaked"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_drain_serves_until_it_ends_then_exits_zero() {
    let w = &World::new().await;
    let ((drain, healthz_after_term, term_at, flip_at), run) =
        serve(w, &[LB_NONE], |addr, pid| async move {
            let (drain, (healthz, term_at, flip_at)) = tokio::join!(get(&addr, "/drain"), async {
                sleep(ms(500)).await;
                let term_at = Instant::now();
                kill(pid, "-TERM");
                sleep(ms(700)).await;
                // Still serving, and the drain is still waiting for the endpoint.
                let healthz = get(&addr, "/healthz").await;
                let flip_at = Instant::now();
                w.flip_endpoint();
                (healthz, term_at, flip_at)
            });
            (drain, healthz, term_at, flip_at)
        })
        .await;
    let exited_at = Instant::now();
    run.assert_code(0);
    assert_eq!(
        healthz_after_term.status, 200,
        "still serving after SIGTERM"
    );
    assert_eq!(
        drain.status, 200,
        "the caller got the result before the exit: {drain:?}"
    );
    let summary: serde_json::Value = serde_json::from_str(&drain.body).expect("JSON");
    assert_eq!(
        summary["outcome"], "drained",
        "SIGTERM did not interrupt the drain: {summary}"
    );
    // Exited after the flip + settle, not at SIGTERM.
    assert!(
        exited_at.duration_since(flip_at) >= ms(200),
        "exited before the drain ended"
    );
    assert!(exited_at.duration_since(term_at) < Duration::from_secs(8));
    run.assert_logged(&["received SIGTERM during a drain"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_without_a_drain_exit_at_once() {
    for (sig, code) in [("-TERM", 0), ("-INT", 130)] {
        let w = &World::new().await;
        let (sent_at, run) = serve(w, &[LB_NONE], |_addr, pid| async move {
            let at = Instant::now();
            kill(pid, sig);
            at
        })
        .await;
        assert_eq!(run.code, Some(code), "{sig}: {}", run.stderr);
        assert!(
            sent_at.elapsed() < Duration::from_secs(1),
            "{sig}: took {:?} to exit",
            sent_at.elapsed()
        );
        assert!(w.kube.requests().is_empty(), "no drain was asked for");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_during_a_drain_exits_130_at_once() {
    let w = &World::new().await;
    let (sent_at, run) = serve(w, &[LB_NONE], |addr, pid| async move {
        let (_, at) = tokio::join!(get(&addr, "/drain"), async {
            sleep(ms(500)).await;
            let at = Instant::now();
            kill(pid, "-INT");
            at
        });
        at
    })
    .await;
    run.assert_code(130);
    assert!(
        sent_at.elapsed() < Duration::from_secs(2),
        "{:?}",
        sent_at.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx_and_the_server_survives() {
    let w = &World::new().await;
    let (answers, run) = serve(w, &[LB_NONE], |addr, pid| async move {
        let mut a = Vec::new();
        a.push(("garbage", raw(&addr, b"\x00\x01\x02 not http at all\r\n\r\n").await));
        let huge = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(16 * 1024));
        a.push(("huge header", raw(&addr, huge.as_bytes()).await));
        let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{}\r\n", "X-H: 1\r\n".repeat(200));
        a.push(("too many headers", raw(&addr, many.as_bytes()).await));
        a.push(("POST /drain", raw(&addr, b"POST /drain HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").await));
        a.push(("HEAD /drain", raw(&addr, b"HEAD /drain HTTP/1.1\r\nHost: x\r\n\r\n").await));
        a.push(("unknown path", get(&addr, "/drain/../../etc/passwd").await));
        a.push(("unknown path 2", get(&addr, "/").await));
        a.push(("big body", raw(&addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\nabc").await));
        let chunked = format!("GET /healthz HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{}\r\n0\r\n\r\n", 4096, "b".repeat(4096));
        a.push(("big chunked body", raw(&addr, chunked.as_bytes()).await));
        a.push(("bad version", raw(&addr, b"GET /healthz HTTP/9.9\r\n\r\n").await));
        a.push(("small body", raw(&addr, b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc").await));

        // Connection limit: 64 idle connections hold every slot; the next one is closed unanswered.
        let mut idle = Vec::new();
        for _ in 0..64 {
            idle.push(TcpStream::connect(&addr).await.expect("connect"));
        }
        sleep(ms(200)).await;
        let t = Instant::now();
        let over = get(&addr, "/healthz").await;
        let over_took = t.elapsed();
        drop(idle);
        // Slots come back as the server sees the idle connections close.
        let mut after = get(&addr, "/healthz").await;
        for _ in 0..50 {
            if after.status == 200 {
                break;
            }
            sleep(ms(50)).await;
            after = get(&addr, "/healthz").await;
        }
        a.push(("after everything", after));
        kill(pid, "-TERM");
        (a, over, over_took)
    })
    .await;
    let (answers, over, over_took) = answers;
    let status: HashMap<&str, u16> = answers.iter().map(|(k, a)| (*k, a.status)).collect();
    assert_eq!(status["garbage"], 400, "{answers:?}");
    assert_eq!(status["huge header"], 431, "{answers:?}");
    assert!(
        (400..500).contains(&status["too many headers"]),
        "{answers:?}"
    );
    assert_eq!(status["POST /drain"], 405, "{answers:?}");
    assert_eq!(status["HEAD /drain"], 405, "{answers:?}");
    assert_eq!(status["unknown path"], 404, "{answers:?}");
    assert_eq!(status["unknown path 2"], 404, "{answers:?}");
    assert_eq!(status["big body"], 413, "{answers:?}");
    assert_eq!(status["big chunked body"], 413, "{answers:?}");
    assert!((400..600).contains(&status["bad version"]), "{answers:?}");
    assert_eq!(status["small body"], 200, "{answers:?}");
    assert_eq!(status["after everything"], 200, "{answers:?}");
    assert_eq!(
        over.status, 0,
        "the 65th connection is closed without an answer: {over:?}"
    );
    assert!(
        over_took < Duration::from_secs(2),
        "closed at once, not after a timeout: {over_took:?}"
    );
    run.assert_code(0);
    run.assert_logged(&["connections open"]);
    assert!(
        w.kube.requests().is_empty(),
        "no request above started a drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_serves_the_fallback_wait() {
    let w = &World::new().await;
    let ((answer, took), run) = serve(
        w,
        &[
            ("DRAINWAIT_MAX_WAIT", "forever"),
            ("DRAINWAIT_FALLBACK_WAIT", "1s"),
        ],
        |addr, pid| async move {
            let t = Instant::now();
            let a = get(&addr, "/drain").await;
            let took = t.elapsed();
            kill(pid, "-TERM");
            (a, took)
        },
    )
    .await;
    run.assert_code(0);
    assert!(took >= ms(950), "waited DRAINWAIT_FALLBACK_WAIT: {took:?}");
    let summary: serde_json::Value = serde_json::from_str(&answer.body).expect("JSON");
    assert_eq!(
        (summary["outcome"].as_str(), summary["exit_code"].as_u64()),
        (Some("fallback"), Some(2)),
        "{summary}"
    );
    assert!(
        summary["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("DRAINWAIT_MAX_WAIT"),
        "{summary}"
    );
    run.assert_logged(&["\"forever\""]);
    assert!(
        w.kube.requests().is_empty(),
        "nothing asked of the API with a bad config"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_listen_address_exits_two() {
    let w = &World::new().await;
    let run = w
        .run(&["serve"], &[("DRAINWAIT_LISTEN", "localhost:http")])
        .await;
    run.assert_code(2);
    run.assert_logged(&["DRAINWAIT_LISTEN", "0.0.0.0:9090"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_not_deleting_answer_is_not_kept_for_the_real_deletion() {
    let w = &World::new().await;
    w.kube.put_pod(pod()); // a container restart: no deletionTimestamp
    let ((restart, deletion), run) = serve(w, &[LB_NONE], |addr, pid| async move {
        let restart = get(&addr, "/drain").await;
        w.kube.mark_deleting(NS, POD, Duration::from_secs(30));
        w.flip_endpoint();
        let deletion = get(&addr, "/drain").await;
        kill(pid, "-TERM");
        (restart, deletion)
    })
    .await;
    run.assert_code(0);
    let outcome = |a: &Answer| {
        serde_json::from_str::<serde_json::Value>(&a.body).expect("JSON")["outcome"].clone()
    };
    assert_eq!(outcome(&restart), "not-deleting", "{restart:?}");
    assert_eq!(outcome(&deletion), "drained", "{deletion:?}");
    let pod_gets = requests_to(w, |r| r.path.ends_with(&format!("/pods/{POD}")));
    assert_eq!(pod_gets, 2, "the deletion ran its own drain");
}
