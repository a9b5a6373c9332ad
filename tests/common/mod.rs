//! Shared set-up for end-to-end tests: the fakes, objects for one pod, and
//! running the real `drainwait` binary against them.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use drainwait::sim::elb::FakeElb;
use drainwait::sim::kube::FakeKube;
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

pub const NS: &str = "argo";
pub const POD: &str = "argo-server-7d9f";
pub const UID: &str = "3f0c1b9e-0000-4000-8000-000000000001";
pub const IP: &str = "10.1.2.3";
pub const SVC: &str = "argo-server";
pub const PORT: u16 = 2746;
pub const TG: &str =
    "arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/argo/0123456789abcdef";

/// The fakes plus a kubeconfig pointing at the fake API server.
pub struct World {
    pub kube: FakeKube,
    pub elb: FakeElb,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

impl World {
    /// A pod being deleted (grace 30 s), in rotation behind Service `argo-server` port `web` → 2746.
    pub async fn new() -> World {
        let kube = FakeKube::start().await.expect("fake kube");
        let elb = FakeElb::start().await.expect("fake elb");
        let dir = tempfile::tempdir().expect("tmp");
        let kubeconfig = dir.path().join("kubeconfig");
        kube.write_kubeconfig(&kubeconfig, NS).expect("kubeconfig");
        kube.put_pod(pod());
        kube.mark_deleting(NS, POD, Duration::from_secs(30));
        kube.put_service(service());
        kube.put_endpoint_slice(slice(true, false));
        World {
            kube,
            elb,
            dir,
            kubeconfig,
        }
    }

    /// Take the pod out of rotation the way the EndpointSlice controller does.
    pub fn flip_endpoint(&self) {
        self.kube
            .update_endpoint_slice(NS, "argo-server-abc12", |s| {
                for ep in &mut s.endpoints {
                    let c = ep.conditions.get_or_insert_with(Default::default);
                    c.ready = Some(false);
                    c.serving = Some(true);
                    c.terminating = Some(true);
                }
            });
    }

    /// An ip-type TargetGroupBinding for the Service, by port number.
    pub fn bind_target_group(&self) {
        self.elb.add_target_group(TG, "argo", PORT);
        self.elb.register(TG, IP, PORT);
        self.kube.put_target_group_binding(
            NS,
            "argo-server-tgb",
            json!({"targetGroupARN": TG, "targetType": "ip", "serviceRef": {"name": SVC, "port": 80}}),
        );
    }

    /// Run the binary with the base environment plus `extra`; `during` runs while it waits.
    pub async fn run(&self, args: &[&str], extra: &[(&str, &str)]) -> Run {
        self.run_with(args, extra, |_| {}).await
    }

    /// `program` with `args`, the base environment for this world, and `extra`.
    pub fn command(
        &self,
        program: impl AsRef<std::ffi::OsStr>,
        args: &[&str],
        extra: &[(&str, &str)],
    ) -> tokio::process::Command {
        let mut cmd = tokio::process::Command::new(program);
        cmd.args(args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("KUBECONFIG", &self.kubeconfig)
            .env("DRAINWAIT_POD_NAME", POD)
            .env("DRAINWAIT_POD_NAMESPACE", NS)
            .env("DRAINWAIT_LOG_TO_PID1", "false")
            .env("DRAINWAIT_ENDPOINTS_SETTLE", "200ms")
            .env("DRAINWAIT_LB_SETTLE", "300ms")
            .env("DRAINWAIT_POLL_INTERVAL", "100ms")
            .env("DRAINWAIT_REQUEST_TIMEOUT", "1s")
            .env("DRAINWAIT_FALLBACK_WAIT", "2s")
            .env("DRAINWAIT_MAX_WAIT", "20s")
            .env("AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2", self.elb.url())
            .env("AWS_ACCESS_KEY_ID", "AKIDSIMULATED0000001")
            .env("AWS_SECRET_ACCESS_KEY", "sim-secret-key-do-not-print")
            .env("AWS_SESSION_TOKEN", "sim-session-token-do-not-print")
            .env("AWS_REGION", "us-east-1")
            // Never reach for the instance metadata service from a test.
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in extra {
            if *v == UNSET {
                cmd.env_remove(k);
            } else {
                cmd.env(k, v);
            }
        }
        cmd
    }

    /// Like [`World::run`], with access to the child (e.g. to signal it).
    pub async fn run_with(
        &self,
        args: &[&str],
        extra: &[(&str, &str)],
        with_child: impl FnOnce(u32),
    ) -> Run {
        let mut cmd = self.command(env!("CARGO_BIN_EXE_drainwait"), args, extra);
        let started = Instant::now();
        let child = cmd.spawn().expect("spawn drainwait");
        with_child(child.id().unwrap_or(0));
        let out = tokio::time::timeout(Duration::from_secs(60), child.wait_with_output())
            .await
            .expect("drainwait must exit by itself")
            .expect("wait");
        Run {
            code: out.status.code(),
            elapsed: started.elapsed(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// The ELBv2 requests of one action, in arrival order.
    pub fn elb_calls(&self, action: &str) -> Vec<drainwait::sim::elb::ElbRequest> {
        self.elb
            .requests()
            .into_iter()
            .filter(|r| r.action == action)
            .collect()
    }

    /// Reasons of the Events recorded on the pod.
    pub fn event_reasons(&self) -> Vec<String> {
        self.kube
            .events()
            .iter()
            .filter_map(|e| e.get("reason").and_then(|r| r.as_str()).map(String::from))
            .collect()
    }
}

/// As a value in `extra`: remove the variable from the base environment.
pub const UNSET: &str = "\u{0}unset";

/// A finished run.
#[derive(Debug)]
pub struct Run {
    pub code: Option<i32>,
    pub elapsed: Duration,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The process exited with `code`; otherwise fail showing its log.
    #[track_caller]
    pub fn assert_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "exit code; stderr:\n{}", self.stderr);
    }

    /// Its log (stderr) holds every one of `needles`.
    #[track_caller]
    pub fn assert_logged(&self, needles: &[&str]) {
        for n in needles {
            assert!(
                self.stderr.contains(n),
                "missing {n:?} in stderr:\n{}",
                self.stderr
            );
        }
    }
}

pub fn pod() -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD, "namespace": NS, "uid": UID, "labels": {"app": "argo-server"}},
        "spec": {"containers": [{"name": "argo-server", "image": "argocli", "ports": [{"containerPort": PORT, "name": "web"}]}]},
        "status": {"phase": "Running", "podIP": IP, "podIPs": [{"ip": IP}]}
    }))
    .expect("pod")
}

pub fn service() -> Service {
    serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": SVC, "namespace": NS},
        "spec": {"selector": {"app": "argo-server"}, "ports": [{"name": "web", "port": 80, "targetPort": PORT}]}
    }))
    .expect("service")
}

pub fn slice(ready: bool, terminating: bool) -> EndpointSlice {
    serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "argo-server-abc12", "namespace": NS, "labels": {"kubernetes.io/service-name": SVC}},
        "addressType": "IPv4",
        "ports": [{"name": "web", "port": PORT, "protocol": "TCP"}],
        "endpoints": [
            {"addresses": [IP], "conditions": {"ready": ready, "serving": true, "terminating": terminating},
             "targetRef": {"kind": "Pod", "name": POD, "namespace": NS, "uid": UID}},
            {"addresses": ["10.1.2.4"], "conditions": {"ready": true},
             "targetRef": {"kind": "Pod", "name": "argo-server-other", "namespace": NS, "uid": "other-uid"}}
        ]
    }))
    .expect("slice")
}
