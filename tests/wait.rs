//! The real `drainwait` binary against the fake API server and fake ELBv2, over loopback:
//! every path of SPEC's "The wait, precisely" and every exit code.

mod common;

use std::time::Duration;

use common::*;
use drainwait::sim::elb::{ElbFault, ElbFaultKind, TokenBucket};
use drainwait::sim::kube::{Fault, FaultKind};
use serde_json::json;
use tokio::time::sleep;

const LB_NONE: (&str, &str) = ("DRAINWAIT_LB", "none");

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drains_when_the_endpoint_flips_then_settles() {
    let w = World::new().await;
    let (run, ()) = tokio::join!(w.run(&[], &[LB_NONE]), async {
        sleep(ms(700)).await;
        w.flip_endpoint();
    });
    run.assert_code(0);
    // Flip at 0.7 s + settle 0.2 s; well under the 25 s the grace period allows.
    assert!(
        run.elapsed >= ms(900),
        "exited before flip + settle: {:?}",
        run.elapsed
    );
    assert!(run.elapsed < Duration::from_secs(8), "{:?}", run.elapsed);
    run.assert_logged(&["drained after"]);
    assert_eq!(w.event_reasons(), vec!["Drained"]);
    let ev = &w.kube.events()[0];
    assert_eq!(ev["type"], "Normal");
    assert_eq!(ev["regarding"]["uid"], UID);
    assert!(
        ev["note"]
            .as_str()
            .unwrap_or_default()
            .contains("endpoints passed"),
        "{ev}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn already_out_at_start_passes_after_the_settle() {
    let w = World::new().await;
    w.flip_endpoint();
    let run = w
        .run(&["wait"], &[LB_NONE, ("DRAINWAIT_ENDPOINTS_SETTLE", "1s")])
        .await;
    run.assert_code(0);
    assert!(
        run.elapsed >= Duration::from_secs(1),
        "settle counted from first seen out: {:?}",
        run.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_filter_uses_a_label_selector() {
    let w = World::new().await;
    let (run, ()) = tokio::join!(
        w.run(&[], &[LB_NONE, ("DRAINWAIT_SERVICES", "argo-server,other")]),
        async {
            sleep(ms(400)).await;
            w.flip_endpoint();
        }
    );
    run.assert_code(0);
    let lists: Vec<_> = w
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.path.contains("endpointslices"))
        .collect();
    assert!(!lists.is_empty());
    assert!(
        lists.iter().all(|r| r
            .query
            .contains("labelSelector=kubernetes.io%2Fservice-name+in+%28argo-server%2Cother%29")
            || r.query.contains(
                "labelSelector=kubernetes.io%2Fservice-name%20in%20%28argo-server%2Cother%29"
            )),
        "{lists:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn not_deleting_exits_at_once_or_waits_when_asked() {
    let w = World::new().await;
    w.kube.put_pod(pod()); // no deletionTimestamp
    let run = w.run(&[], &[]).await;
    run.assert_code(0);
    assert!(run.elapsed < Duration::from_secs(5));
    run.assert_logged(&["not-deleting"]);
    assert_eq!(w.event_reasons(), vec!["NotDeleting"]);

    // DRAINWAIT_IF_NOT_DELETING=wait: waits as usual, here until MAX_WAIT.
    let run = w
        .run(
            &[],
            &[
                LB_NONE,
                ("DRAINWAIT_IF_NOT_DELETING", "wait"),
                ("DRAINWAIT_MAX_WAIT", "1500ms"),
            ],
        )
        .await;
    run.assert_code(1);
    assert!(run.elapsed >= ms(1500), "{:?}", run.elapsed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_gone_exits_zero() {
    let w = World::new().await;
    w.kube.delete_pod(NS, POD);
    let run = w.run(&[], &[]).await;
    run.assert_code(0);
    run.assert_logged(&["pod-gone"]);
    assert!(w.kube.events().is_empty(), "no pod to hang an Event on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_already_past_exits_one_at_once() {
    let w = World::new().await;
    // 3 s of grace left, 5 s reserve: no time at all.
    w.kube.mark_deleting(NS, POD, Duration::from_secs(3));
    let run = w.run(&[], &[LB_NONE]).await;
    run.assert_code(1);
    assert!(run.elapsed < Duration::from_secs(4), "{:?}", run.elapsed);
    run.assert_logged(&["DRAINWAIT_SHUTDOWN_RESERVE"]);
    assert_eq!(w.event_reasons(), vec!["DrainDeadlineReached"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_from_grace_period_names_pending_gates() {
    let w = World::new().await;
    // 7 s grace - 5 s reserve = 2 s, earlier than MAX_WAIT.
    w.kube.mark_deleting(NS, POD, Duration::from_secs(7));
    let run = w.run(&[], &[LB_NONE]).await;
    run.assert_code(1);
    assert!(
        run.elapsed >= ms(1500) && run.elapsed < Duration::from_secs(5),
        "{:?}",
        run.elapsed
    );
    run.assert_logged(&["gates pending: endpoints"]);
    run.assert_logged(&["in rotation via argo-server"]);
    let ev = &w.kube.events()[0];
    assert_eq!(
        (ev["type"].as_str(), ev["reason"].as_str()),
        (Some("Warning"), Some("DrainDeadlineReached"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_value_waits_the_fallback_then_exits_two() {
    let w = World::new().await;
    let run = w
        .run(
            &[],
            &[
                ("DRAINWAIT_MAX_WAIT", "forever"),
                ("DRAINWAIT_FALLBACK_WAIT", "1s"),
            ],
        )
        .await;
    run.assert_code(2);
    assert!(run.elapsed >= Duration::from_secs(1), "{:?}", run.elapsed);
    run.assert_logged(&["DRAINWAIT_MAX_WAIT", "\"forever\"", "1m30s"]);
    assert!(
        w.kube.requests().is_empty(),
        "nothing asked of the API with a bad config"
    );

    // The fallback wait itself invalid: its default (30 s) applies; SIGTERM ends it early with 143.
    let run = w
        .run_with(&[], &[("DRAINWAIT_FALLBACK_WAIT", "soon")], |pid| {
            std::thread::spawn(move || {
                std::thread::sleep(ms(1500));
                let _ = std::process::Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
            });
        })
        .await;
    run.assert_code(143);
    assert!(
        run.elapsed >= ms(1500) && run.elapsed < Duration::from_secs(20),
        "{:?}",
        run.elapsed
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_errors_exit_two_at_once() {
    let w = World::new().await;
    let run = w.run(&["--no-such-flag"], &[]).await;
    assert_eq!(run.code, Some(2));
    assert!(run.elapsed < Duration::from_secs(2));
    run.assert_logged(&["--no-such-flag"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_endpointslices_fall_back_with_the_missing_rule() {
    let w = World::new().await;
    w.kube.deny("list", "discovery.k8s.io", "endpointslices");
    let run = w
        .run(&[], &[LB_NONE, ("DRAINWAIT_FALLBACK_WAIT", "1500ms")])
        .await;
    run.assert_code(1);
    assert!(
        run.elapsed >= ms(1500) && run.elapsed < Duration::from_secs(6),
        "{:?}",
        run.elapsed
    );
    run.assert_logged(&[r#"resources: ["endpointslices"], verbs: ["list", "watch"]"#]);
    run.assert_logged(&["fallback after"]);
    // Not retried forever: a 403 is final.
    let lists = w
        .kube
        .requests()
        .iter()
        .filter(|r| r.path.contains("endpointslices"))
        .count();
    assert!(lists <= 2, "403 retried {lists} times");
    assert_eq!(w.event_reasons(), vec!["DrainFallback"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forbidden_pod_get_falls_back() {
    let w = World::new().await;
    w.kube.deny("get", "", "pods");
    let run = w
        .run(&[], &[LB_NONE, ("DRAINWAIT_FALLBACK_WAIT", "1s")])
        .await;
    run.assert_code(1);
    assert!(run.elapsed >= Duration::from_secs(1));
    run.assert_logged(&[r#"resources: ["pods"], verbs: ["get"]"#]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_down_falls_back_never_worse_than_a_sleep() {
    let mut w = World::new().await;
    // Point the kubeconfig at a port nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = dead.local_addr().expect("addr").port();
    drop(dead);
    let cfg = w
        .kube
        .kubeconfig_yaml(NS)
        .replace(&w.kube.url(), &format!("http://127.0.0.1:{port}"));
    w.kubeconfig = w.dir.path().join("dead-kubeconfig");
    std::fs::write(&w.kubeconfig, cfg).expect("write");
    let run = w
        .run(&[], &[LB_NONE, ("DRAINWAIT_FALLBACK_WAIT", "1500ms")])
        .await;
    run.assert_code(1);
    assert!(
        run.elapsed >= ms(1400) && run.elapsed < Duration::from_secs(6),
        "{:?}",
        run.elapsed
    );
    run.assert_logged(&["cannot read pod"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_errors_hangs_and_watch_faults_are_survived() {
    let w = World::new().await;
    w.kube
        .inject(Fault::new("/pods/", FaultKind::Status(500)).times(2));
    w.kube.inject(
        Fault::new("endpointslices", FaultKind::Hang)
            .watch(false)
            .times(1),
    );
    w.kube.inject(
        Fault::new("endpointslices", FaultKind::Status(503))
            .watch(false)
            .times(2),
    );
    w.kube.inject(
        Fault::new("endpointslices", FaultKind::DropWatch)
            .watch(true)
            .times(1),
    );
    w.kube.inject(
        Fault::new("endpointslices", FaultKind::GoneInStream)
            .watch(true)
            .times(1),
    );
    let (run, ()) = tokio::join!(w.run(&[], &[LB_NONE]), async {
        sleep(Duration::from_secs(3)).await;
        w.flip_endpoint();
    });
    run.assert_code(0);
    assert!(
        run.elapsed >= ms(3200) && run.elapsed < Duration::from_secs(12),
        "{:?}",
        run.elapsed
    );
    let reqs = w.kube.requests();
    let pod_gets = reqs
        .iter()
        .filter(|r| r.path.ends_with(&format!("/pods/{POD}")))
        .count();
    assert_eq!(pod_gets, 3, "two 500s then success");
    let lists = reqs
        .iter()
        .filter(|r| r.path.contains("endpointslices") && !r.query.contains("watch="))
        .count();
    assert!(
        lists >= 4,
        "hang, two 503s, then a good list; the 410 relists: {lists}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn signals_exit_at_once_with_130_and_143() {
    for (sig, code) in [("-INT", 130), ("-TERM", 143)] {
        let w = World::new().await;
        let run = w
            .run_with(&[], &[LB_NONE], |pid| {
                std::thread::spawn(move || {
                    std::thread::sleep(ms(1000));
                    let _ = std::process::Command::new("kill")
                        .args([sig, &pid.to_string()])
                        .status();
                });
            })
            .await;
        assert_eq!(run.code, Some(code), "{sig}: {}", run.stderr);
        assert!(run.elapsed < Duration::from_secs(4), "{:?}", run.elapsed);
        run.assert_logged(&[if code == 130 { "SIGINT" } else { "SIGTERM" }]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_target_draining_then_lb_settle() {
    let w = World::new().await;
    w.bind_target_group();
    w.elb.schedule(
        TG,
        IP,
        PORT,
        vec![(
            ms(1500),
            "draining".into(),
            Some("Target.DeregistrationInProgress".into()),
        )],
    );
    let (run, ()) = tokio::join!(w.run(&[], &[]), async {
        sleep(ms(500)).await;
        w.flip_endpoint();
    });
    run.assert_code(0);
    // Draining at 1.5 s (+ up to one poll) + LB settle 0.3 s.
    assert!(
        run.elapsed >= ms(1800) && run.elapsed < Duration::from_secs(8),
        "{:?}",
        run.elapsed
    );
    let calls = w.elb_calls("DescribeTargetHealth");
    assert!(!calls.is_empty());
    for c in &calls {
        assert_eq!(c.target_group_arn.as_deref(), Some(TG));
        assert_eq!(
            c.targets,
            vec![(IP.to_string(), Some(PORT))],
            "exactly this pod's target"
        );
        assert!(c.authorization_present, "signed request");
        assert_eq!(c.signing_region.as_deref(), Some("us-east-1"), "AWS_REGION");
    }
    // Stops polling once the target is out: one poll every ~100 ms for ~1.6 s, not more.
    assert!(calls.len() < 40, "{} calls", calls.len());
    run.assert_logged(&["aws passed"]);
    run.assert_logged(&["10.1.2.3:2746@argo draining"]);
    // The Service port was read to map serviceRef.port 80 → "web" → 2746.
    assert!(
        w.kube
            .requests()
            .iter()
            .any(|r| r.path.ends_with(&format!("/services/{SVC}")))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_name_lookup_named_port_and_instance_bindings() {
    let w = World::new().await;
    w.elb.add_target_group(TG, "argo", PORT);
    w.elb.register(TG, IP, PORT);
    w.kube.put_target_group_binding(NS, "by-name", json!({"targetGroupName": "argo", "targetType": "ip", "serviceRef": {"name": SVC, "port": "web"}}));
    w.kube.put_target_group_binding(NS, "nodes", json!({"targetGroupARN": TG, "targetType": "instance", "serviceRef": {"name": SVC, "port": 80}}));
    w.kube.put_target_group_binding(NS, "someone-else", json!({"targetGroupARN": TG, "targetType": "ip", "serviceRef": {"name": "unrelated", "port": 80}}));
    w.elb.deregister(TG, IP, PORT, ms(600));
    w.flip_endpoint();
    let run = w.run(&[], &[]).await;
    run.assert_code(0);
    run.assert_logged(&["instance targets"]);
    let reqs = w.elb.requests();
    assert!(
        reqs.iter()
            .any(|r| r.action == "DescribeTargetGroups" && r.names == vec!["argo".to_string()])
    );
    assert!(
        reqs.iter()
            .filter(|r| r.action == "DescribeTargetHealth")
            .all(|r| r.targets == vec![(IP.to_string(), Some(PORT))])
    );
    // Named serviceRef.port needs no Service read.
    assert!(
        !w.kube
            .requests()
            .iter()
            .any(|r| r.path.contains("/services/"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_explicit_arns_and_invalid_target_asked_alone() {
    let w = World::new().await;
    let tg2 = "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/argo-grpc/fedcba9876543210";
    w.elb.add_target_group(TG, "argo", PORT);
    w.elb.add_target_group(tg2, "argo-grpc", PORT);
    w.elb.register(TG, IP, PORT);
    w.elb.register(tg2, IP, PORT);
    w.elb.register(tg2, "10.1.2.3", 9999);
    w.elb.set_state(
        TG,
        IP,
        PORT,
        "draining",
        Some("Target.DeregistrationInProgress"),
    );
    w.elb
        .set_state(tg2, IP, PORT, "unused", Some("Target.NotRegistered"));
    w.flip_endpoint();
    let arns = format!("{TG},{tg2}");
    let run = w
        .run(
            &[],
            &[
                ("DRAINWAIT_AWS_TARGET_GROUP_ARNS", &arns),
                ("DRAINWAIT_LB", "aws"),
            ],
        )
        .await;
    run.assert_code(0);
    let groups: std::collections::BTreeSet<_> = w
        .elb
        .requests()
        .iter()
        .filter_map(|r| r.target_group_arn.clone())
        .collect();
    assert_eq!(groups.len(), 2);
    // Port from the pod's only EndpointSlice port.
    assert!(
        w.elb
            .requests()
            .iter()
            .all(|r| r.targets.iter().all(|t| t.1 == Some(PORT)))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_invalid_target_is_out_when_asked_alone() {
    let w = World::new().await;
    w.bind_target_group();
    w.elb.set_invalid_targets(&[IP]);
    w.flip_endpoint();
    let run = w
        .run(
            &[],
            &[
                ("DRAINWAIT_AWS_TARGET_GROUP_ARNS", TG),
                ("DRAINWAIT_AWS_TARGET_PORT", "8080"),
            ],
        )
        .await;
    run.assert_code(0);
    // Two targets (binding's 2746 and explicit 8080) in one call → InvalidTarget → one call each.
    let calls = w.elb_calls("DescribeTargetHealth");
    assert!(
        calls
            .iter()
            .any(|c| c.targets.len() == 2 && c.outcome == "InvalidTarget"),
        "{calls:?}"
    );
    assert!(
        calls.iter().filter(|c| c.targets.len() == 1).count() >= 2,
        "{calls:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_throttling_backs_off_and_still_drains() {
    let w = World::new().await;
    w.bind_target_group();
    w.elb.set_rate_limit(Some(TokenBucket {
        burst: 3.0,
        refill_per_sec: 2.0,
    }));
    w.elb.inject(ElbFault {
        action: Some("DescribeTargetHealth".into()),
        kind: ElbFaultKind::Throttling,
        times: 2,
    });
    w.elb
        .schedule(TG, IP, PORT, vec![(ms(2500), "draining".into(), None)]);
    w.flip_endpoint();
    let run = w.run(&[], &[]).await;
    run.assert_code(0);
    let stats = w.elb.stats();
    assert!(stats.throttled >= 2, "{stats:?}");
    // 100 ms polling for ~2.5 s would be ~25 calls; backing off keeps it well below.
    assert!(stats.describe_target_health < 20, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_target_group_not_found_falls_back() {
    let w = World::new().await;
    w.bind_target_group();
    w.elb.inject(ElbFault {
        action: Some("DescribeTargetHealth".into()),
        kind: ElbFaultKind::TargetGroupNotFound,
        times: 1,
    });
    w.flip_endpoint();
    let run = w.run(&[], &[("DRAINWAIT_FALLBACK_WAIT", "1500ms")]).await;
    run.assert_code(1);
    assert!(run.elapsed >= ms(1500), "{:?}", run.elapsed);
    run.assert_logged(&["TargetGroupNotFound", "DRAINWAIT_AWS_TARGET_GROUP_ARNS"]);
    run.assert_logged(&["endpoints passed", "aws fallback"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_mode_without_targets_says_what_to_set() {
    let w = World::new().await;
    w.flip_endpoint();
    let run = w
        .run(
            &[],
            &[("DRAINWAIT_LB", "aws"), ("DRAINWAIT_FALLBACK_WAIT", "1s")],
        )
        .await;
    run.assert_code(1);
    run.assert_logged(&["DRAINWAIT_LB=aws but", "DRAINWAIT_AWS_TARGET_GROUP_ARNS"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_crd_means_no_bindings_in_auto_mode() {
    let w = World::new().await;
    w.kube.set_tgb_crd_installed(false);
    w.flip_endpoint();
    let run = w.run(&[], &[]).await;
    run.assert_code(0);
    run.assert_logged(&["aws skipped"]);
    assert!(w.elb.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_are_one_object_per_line_and_secrets_never_appear() {
    let w = World::new().await;
    w.bind_target_group();
    w.elb.set_state(TG, IP, PORT, "draining", None);
    w.flip_endpoint();
    let run = w
        .run(
            &[],
            &[("DRAINWAIT_LOG_FORMAT", "json"), ("DRAINWAIT_LOG", "trace")],
        )
        .await;
    run.assert_code(0);
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert!(lines.len() > 3);
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some(), "{l}");
    }
    for secret in [
        "sim-token",
        "sim-secret-key-do-not-print",
        "sim-session-token-do-not-print",
        "Authorization",
        "X-Amz-Security-Token",
    ] {
        assert!(
            !run.stderr.to_lowercase().contains(&secret.to_lowercase()),
            "{secret} leaked"
        );
    }
    assert!(run.stdout.is_empty(), "wait writes nothing to stdout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_failures_never_change_the_exit_code() {
    let w = World::new().await;
    w.kube.deny("create", "events.k8s.io", "events");
    w.flip_endpoint();
    let run = w.run(&[], &[LB_NONE]).await;
    run.assert_code(0);
    run.assert_logged(&["could not record the Event", "events.k8s.io"]);

    let w = World::new().await;
    w.flip_endpoint();
    let run = w.run(&[], &[LB_NONE, ("DRAINWAIT_EVENTS", "false")]).await;
    run.assert_code(0);
    assert!(w.kube.events().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_from_pod_name_fallbacks() {
    let w = World::new().await;
    w.flip_endpoint();
    let run = w
        .run(
            &[],
            &[LB_NONE, ("DRAINWAIT_POD_NAME", ""), ("POD_NAME", POD)],
        )
        .await;
    run.assert_code(0);
    let run = w
        .run(
            &[],
            &[
                LB_NONE,
                ("DRAINWAIT_POD_NAME", ""),
                ("HOSTNAME", POD),
                ("DRAINWAIT_POD_NAMESPACE", ""),
            ],
        )
        .await;
    assert_eq!(
        run.code,
        Some(0),
        "namespace from the kubeconfig context: {}",
        run.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_copies_the_binary() {
    let w = World::new().await;
    let dir = w.dir.path().join("bin");
    for _ in 0..2 {
        let run = w
            .run(&["install", dir.to_str().unwrap_or_default()], &[])
            .await;
        run.assert_code(0);
    }
    let installed = dir.join("drainwait");
    let out = std::process::Command::new(&installed)
        .arg("--version")
        .output()
        .expect("run installed");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("drainwait "));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn region_comes_from_the_arn_when_aws_region_is_unset() {
    let w = World::new().await;
    let eu =
        "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/argo-eu/0123456789abcdef";
    w.elb.add_target_group(eu, "argo-eu", PORT);
    w.elb.register(eu, IP, PORT);
    w.elb
        .schedule(eu, IP, PORT, vec![(ms(1000), "draining".into(), None)]);
    let env = [
        ("AWS_REGION", UNSET),
        ("DRAINWAIT_AWS_TARGET_GROUP_ARNS", eu),
    ];
    let (run, ()) = tokio::join!(w.run(&[], &env), async {
        sleep(ms(300)).await;
        w.flip_endpoint();
    });
    run.assert_code(0);
    run.assert_logged(&["aws passed"]);
    let calls = w.elb_calls("DescribeTargetHealth");
    assert!(!calls.is_empty());
    for c in &calls {
        assert_eq!(c.target_group_arn.as_deref(), Some(eu));
        assert_eq!(
            c.signing_region.as_deref(),
            Some("eu-west-1"),
            "signed for the ARN's region"
        );
    }
}

/// `DRAINWAIT_LOG_TO_PID1=auto` in a fresh PID namespace whose PID 1 is a
/// shell with its stdout in a file, as a container's main process would have
/// it: the lines reach that file as well as stderr. Needs root for
/// `unshare --pid` (CI runs as root).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_reach_pid1_stdout_in_auto_mode() {
    let w = World::new().await;
    w.kube.delete_pod(NS, POD);
    let dir = tempfile::tempdir().expect("tmp");
    let pid1_out = dir.path().join("pid1-stdout");
    // The shell stays PID 1 (the `exit` keeps it from exec'ing drainwait).
    let script = r#"exec >"$PID1_OUT"; "$DRAINWAIT" wait; exit $?"#;
    let mut cmd = w.command(
        "unshare",
        &["--pid", "--fork", "--mount-proc", "sh", "-c", script],
        &[
            ("DRAINWAIT_LOG_TO_PID1", "auto"),
            ("DRAINWAIT", env!("CARGO_BIN_EXE_drainwait")),
            ("PID1_OUT", pid1_out.to_str().expect("utf-8 path")),
        ],
    );
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("ends by itself")
        .expect("run unshare (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(0),
        "unshare --pid needs root; stderr:\n{stderr}"
    );
    assert!(stderr.contains("pod-gone"), "{stderr}");
    let pid1 = std::fs::read_to_string(&pid1_out).expect("PID 1's stdout");
    assert!(pid1.contains("pod-gone"), "PID 1's stdout: {pid1:?}");
    // The same lines, not a second format.
    let summary = |s: &str| {
        s.lines()
            .find(|l| l.contains("pod-gone"))
            .map(str::to_string)
    };
    assert_eq!(summary(&pid1), summary(&stderr));
}
