//! `drainwait check`, the real binary against the fake API server and ELBv2 on loopback:
//! the all-good table, each RBAC grant missing in turn, a missing pod, a
//! missing target group, hangs, and `--output json`.

mod common;

use std::time::Duration;

use common::*;
use drainwait::sim::elb::{ElbFault, ElbFaultKind};
use drainwait::sim::kube::{Fault, FaultKind};
use serde_json::Value;

/// The JSON lines of a `--output json` run.
fn lines(run: &Run) -> Vec<Value> {
    let v: Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("stdout is not one JSON document ({e}):\n{}", run.stdout));
    let list = v
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .clone();
    for l in &list {
        assert!(
            l["check"].is_string() && l["ok"].is_boolean() && l["detail"].is_string(),
            "{l}"
        );
        assert_eq!(
            l["ok"].as_bool() == Some(false),
            l["fix"].is_string(),
            "a fix for each ✗ and only then: {l}"
        );
    }
    list
}

fn line<'a>(lines: &'a [Value], check: &str) -> &'a Value {
    lines
        .iter()
        .find(|l| l["check"] == check)
        .unwrap_or_else(|| {
            panic!(
                "no line {check:?} in {}",
                serde_json::to_string_pretty(lines).unwrap_or_default()
            )
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_good_exits_zero_with_every_line_ticked() {
    let w = World::new().await;
    w.bind_target_group();
    w.kube.put_target_group_binding(NS, "nodes", serde_json::json!({"targetGroupARN": TG, "targetType": "instance", "serviceRef": {"name": SVC, "port": 80}}));
    let run = w.run(&["check"], &[]).await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    assert!(!run.stdout.contains('✗'), "{}", run.stdout);
    assert!(run.stdout.contains("a drain would work"), "{}", run.stdout);
    for expected in [
        "✓ config",
        "✓ api",
        "✓ rbac: get pods",
        "✓ rbac: get services",
        "✓ rbac: list discovery.k8s.io/endpointslices",
        "✓ rbac: watch discovery.k8s.io/endpointslices",
        "✓ rbac: create events.k8s.io/events",
        "✓ rbac: patch events.k8s.io/events",
        "✓ rbac: list elbv2.k8s.aws/targetgroupbindings",
        "✓ rbac: watch elbv2.k8s.aws/targetgroupbindings",
        "✓ pod",
        "✓ services",
        "✓ binding argo-server-tgb",
        "✓ binding nodes",
        "✓ targets",
        "✓ aws credentials",
        "✓ target 10.1.2.3:2746 in argo",
        "✓ deadline",
    ] {
        assert!(
            run.stdout.contains(expected),
            "missing {expected:?} in\n{}",
            run.stdout
        );
    }
    assert!(run.stdout.contains("being deleted"), "{}", run.stdout);
    assert!(
        run.stdout.contains("argo-server (in rotation)"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("instance targets") && run.stdout.contains("skipped"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("healthy: in rotation now"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("environment variables"),
        "credential source named: {}",
        run.stdout
    );
    for secret in [
        "sim-token",
        "AKIDSIMULATED",
        "sim-secret-key-do-not-print",
        "sim-session-token-do-not-print",
    ] {
        assert!(
            !run.stdout.contains(secret) && !run.stderr.contains(secret),
            "{secret} leaked"
        );
    }
    // One LIST of the EndpointSlices; no watch from a preflight.
    let reqs = w.kube.requests();
    assert_eq!(
        reqs.iter()
            .filter(|r| r.path.contains("endpointslices"))
            .count(),
        1,
        "{reqs:?}"
    );
    assert!(reqs.iter().all(|r| !r.query.contains("watch=")), "{reqs:?}");
    assert!(w.kube.events().is_empty(), "check records no Event");

    // The same as one JSON document.
    let run = w.run(&["check", "--output", "json"], &[]).await;
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let l = lines(&run);
    assert!(l.iter().all(|l| l["ok"] == true), "{l:?}");
    assert!(
        line(&l, "deadline")["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("deletionGracePeriodSeconds")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_missing_permission_is_named_with_its_rule() {
    let w = World::new().await;
    w.bind_target_group();
    let grants = [
        ("get", "", "pods", "rbac: get pods"),
        ("get", "", "services", "rbac: get services"),
        (
            "list",
            "discovery.k8s.io",
            "endpointslices",
            "rbac: list discovery.k8s.io/endpointslices",
        ),
        (
            "watch",
            "discovery.k8s.io",
            "endpointslices",
            "rbac: watch discovery.k8s.io/endpointslices",
        ),
        (
            "create",
            "events.k8s.io",
            "events",
            "rbac: create events.k8s.io/events",
        ),
        (
            "patch",
            "events.k8s.io",
            "events",
            "rbac: patch events.k8s.io/events",
        ),
        (
            "list",
            "elbv2.k8s.aws",
            "targetgroupbindings",
            "rbac: list elbv2.k8s.aws/targetgroupbindings",
        ),
        (
            "watch",
            "elbv2.k8s.aws",
            "targetgroupbindings",
            "rbac: watch elbv2.k8s.aws/targetgroupbindings",
        ),
    ];
    for (verb, group, resource, check) in grants {
        w.kube.deny(verb, group, resource);
        let run = w.run(&["check", "-o", "json"], &[]).await;
        w.kube.allow(verb, group, resource);
        assert_eq!(run.code, Some(1), "{check}: {}\n{}", run.stdout, run.stderr);
        let l = lines(&run);
        let denied = line(&l, check);
        assert_eq!(denied["ok"], false, "{denied}");
        let fix = denied["fix"].as_str().unwrap_or_default();
        assert!(
            fix.contains(&format!("resources: [\"{resource}\"]"))
                && fix.contains(&format!("\"{verb}\"")),
            "{check}: {fix}"
        );
        // Every other grant still reads ✓.
        let other_rbac_failures: Vec<&Value> = l
            .iter()
            .filter(|x| {
                x["check"].as_str().unwrap_or_default().starts_with("rbac:")
                    && x["check"] != check
                    && x["ok"] == false
            })
            .collect();
        assert!(
            other_rbac_failures.is_empty(),
            "{check}: {other_rbac_failures:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_follow_the_settings() {
    let w = World::new().await;
    let run = w
        .run(
            &["check", "-o", "json"],
            &[("DRAINWAIT_LB", "none"), ("DRAINWAIT_EVENTS", "false")],
        )
        .await;
    assert_eq!(run.code, Some(0), "{}\n{}", run.stdout, run.stderr);
    let l = lines(&run);
    assert!(
        !l.iter().any(|x| x["check"]
            .as_str()
            .unwrap_or_default()
            .contains("targetgroupbindings")),
        "{l:?}"
    );
    assert!(
        !l.iter()
            .any(|x| x["check"].as_str().unwrap_or_default().contains("events")),
        "{l:?}"
    );
    assert!(
        line(&l, "load balancer")["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("DRAINWAIT_LB=none")
    );
    assert!(w.elb.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_pod_fails_with_a_fix() {
    let w = World::new().await;
    w.kube.delete_pod(NS, POD);
    let run = w.run(&["check"], &[]).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("✗ pod") && run.stdout.contains(&format!("no pod {NS}/{POD}")),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("fix: set DRAINWAIT_POD_NAME"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("✓ api") && run.stdout.contains("✓ rbac: get pods"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("checks failed"), "{}", run.stdout);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_target_group_fails_its_target_line() {
    let w = World::new().await;
    w.bind_target_group();
    w.elb.inject(ElbFault {
        action: Some("DescribeTargetHealth".into()),
        kind: ElbFaultKind::TargetGroupNotFound,
        times: 1,
    });
    let run = w.run(&["check", "--output", "json"], &[]).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let l = lines(&run);
    let t = line(&l, "target 10.1.2.3:2746 in argo");
    assert_eq!(t["ok"], false, "{t}");
    assert!(
        t["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("TargetGroupNotFound"),
        "{t}"
    );
    assert!(
        t["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("DRAINWAIT_AWS_TARGET_GROUP_ARNS"),
        "{t}"
    );
    assert_eq!(line(&l, "aws credentials")["ok"], true);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn target_already_draining_and_no_credentials() {
    let w = World::new().await;
    w.bind_target_group();
    w.elb.set_state(
        TG,
        IP,
        PORT,
        "draining",
        Some("Target.DeregistrationInProgress"),
    );
    let run = w.run(&["check", "-o", "json"], &[]).await;
    let l = lines(&run);
    assert!(
        line(&l, "target 10.1.2.3:2746 in argo")["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("already out"),
        "{l:?}"
    );

    // No provider of the chain answers (IMDS is disabled in tests): ✗ with the IAM fix.
    let run = w
        .run(
            &["check", "-o", "json"],
            &[
                ("AWS_ACCESS_KEY_ID", ""),
                ("AWS_SECRET_ACCESS_KEY", ""),
                ("AWS_SESSION_TOKEN", ""),
                ("AWS_CONFIG_FILE", "/nonexistent"),
                ("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent"),
            ],
        )
        .await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let l = lines(&run);
    let creds = line(&l, "aws credentials");
    assert_eq!(creds["ok"], false, "{creds}");
    assert!(
        creds["fix"].as_str().unwrap_or_default().contains("IRSA"),
        "{creds}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_that_cannot_fit_the_settles_fails() {
    let w = World::new().await;
    w.bind_target_group();
    let run = w
        .run(&["check", "-o", "json"], &[("DRAINWAIT_LB_SETTLE", "2m")])
        .await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    let l = lines(&run);
    let d = line(&l, "deadline");
    assert_eq!(d["ok"], false, "{d}");
    assert!(
        d["fix"]
            .as_str()
            .unwrap_or_default()
            .contains("terminationGracePeriodSeconds"),
        "{d}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn never_hangs_on_a_silent_api_and_says_which_call() {
    let w = World::new().await;
    w.kube
        .inject(Fault::new(&format!("/pods/{POD}"), FaultKind::Hang).times(5));
    let run = w.run(&["check"], &[]).await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(run.elapsed < Duration::from_secs(10), "{:?}", run.elapsed);
    assert!(
        run.stdout.contains("✗ pod") && run.stdout.contains("no answer"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("raise DRAINWAIT_REQUEST_TIMEOUT")
            && !run.stdout.contains("fix: add the RBAC rule"),
        "{}",
        run.stdout
    );

    // API down: one ✗ with a fix, fast.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = dead.local_addr().expect("addr").port();
    drop(dead);
    let cfg = w
        .kube
        .kubeconfig_yaml(NS)
        .replace(&w.kube.url(), &format!("http://127.0.0.1:{port}"));
    let path = w.dir.path().join("dead-kubeconfig");
    std::fs::write(&path, cfg).expect("write");
    let run = w
        .run(
            &["check"],
            &[("KUBECONFIG", path.to_str().unwrap_or_default())],
        )
        .await;
    assert_eq!(run.code, Some(1), "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stdout.contains("✗ api") && run.stdout.contains("fix:"),
        "{}",
        run.stdout
    );
    assert!(run.elapsed < Duration::from_secs(5), "{:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_configuration_exits_two_at_once() {
    let w = World::new().await;
    let run = w
        .run(&["check", "-o", "json"], &[("DRAINWAIT_LB", "gcp")])
        .await;
    assert_eq!(run.code, Some(2), "{}\n{}", run.stdout, run.stderr);
    assert!(run.elapsed < Duration::from_secs(2), "{:?}", run.elapsed);
    let l = lines(&run);
    assert_eq!(l.len(), 1);
    assert!(
        line(&l, "config")["detail"]
            .as_str()
            .unwrap_or_default()
            .contains("DRAINWAIT_LB")
    );
    assert!(w.kube.requests().is_empty());
    // Usage errors stay clap's.
    let run = w.run(&["check", "--output", "yaml"], &[]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.stderr.contains("yaml"), "{}", run.stderr);
}
