//! The wait, end to end (SPEC "The wait, precisely").
//!
//! ```text
//! settings ─▶ identity ─▶ GET pod ─┬─ 404 ─────────────▶ pod-gone (0)
//!                                   ├─ not deleting ────▶ not-deleting (0) | wait
//!                                   ├─ deadline passed ─▶ deadline (1)
//!                                   └─▶ gates, concurrently, until all end or the deadline:
//!                                        endpoints ──(synced view)──▶ aws
//!                                        a failing gate waits until start + fallback
//! ```
//!
//! Everything is bounded by one deadline on `tokio::time::Instant`; a signal
//! ends the wait at once. The result is a [`Summary`], logged and (unless
//! disabled) published as an Event.

use std::future::Future;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};

use crate::aws::{self, Clients, Discovered};
use crate::config::{IfNotDeleting, LbMode, Settings};
use crate::decision::{GateEnd, Outcome, overall};
use crate::endpoints;
use crate::k8s::{self, CallError, RULE_PODS};
use crate::pod::{self, PodInfo};
use crate::report::{self, Progress, Summary};

/// A signal that ends the wait at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// SIGINT: exit 130.
    Interrupt,
    /// SIGTERM: exit 143.
    Terminate,
}

impl Signal {
    fn outcome(self) -> Outcome {
        match self {
            Signal::Interrupt => Outcome::Interrupted,
            Signal::Terminate => Outcome::Terminated,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Signal::Interrupt => "SIGINT",
            Signal::Terminate => "SIGTERM",
        }
    }
}

/// Run one wait; `start` is process start, `signal` resolves on SIGINT/SIGTERM.
pub async fn wait(
    settings: Settings,
    start: Instant,
    signal: impl Future<Output = Signal>,
) -> Summary {
    tokio::pin!(signal);
    let fallback_at = start + settings.fallback_wait;
    let cap = start + settings.max_wait;
    let t = settings.request_timeout;

    let Some(name) = pod::resolve_name(settings.pod_name.as_deref(), |k| std::env::var(k).ok())
    else {
        let msg = "cannot tell which pod this is: set DRAINWAIT_POD_NAME (or POD_NAME) from the downward API (fieldRef metadata.name)";
        return fall_back(
            msg,
            start,
            fallback_at.min(cap),
            "?".into(),
            &[],
            &mut signal,
        )
        .await;
    };
    let (client, kube_ns) = match k8s::client(t).await {
        Ok(c) => c,
        Err(e) => return fall_back(&e, start, fallback_at.min(cap), name, &[], &mut signal).await,
    };
    let sa_ns = std::fs::read_to_string(pod::SA_NAMESPACE_FILE).ok();
    let namespace = pod::resolve_namespace(
        settings.pod_namespace.as_deref(),
        |k| std::env::var(k).ok(),
        sa_ns,
        &kube_ns,
    );
    let who = format!("{namespace}/{name}");
    tracing::debug!(pod = %who, "drainwait starting");

    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let got = tokio::select! {
        r = k8s::call(RULE_PODS, t, fallback_at.min(cap), || pods.get(&name)) => r,
        s = &mut signal => return interrupted(s, start, who, &[]),
    };
    let pod = match got {
        Ok(p) => PodInfo::from_pod(&p, &namespace),
        Err(CallError::NotFound(_)) => {
            return finish(
                Outcome::PodGone,
                start,
                who,
                "the pod no longer exists: nothing to drain",
                &[],
                None,
            )
            .await;
        }
        Err(e) => {
            let msg = format!("cannot read pod {who}: {e}");
            return fall_back(&msg, start, fallback_at.min(cap), who, &[], &mut signal).await;
        }
    };
    let events = settings.events.then(|| {
        (
            client.clone(),
            pod.namespace.clone(),
            pod.me.name.clone(),
            pod.me.uid.clone(),
        )
    });

    if pod.deletion.is_none() && settings.if_not_deleting == IfNotDeleting::Exit {
        let msg = "the pod is not being deleted (container restart or node shutdown): exiting at once (DRAINWAIT_IF_NOT_DELETING=exit)";
        return finish(Outcome::NotDeleting, start, who, msg, &[], events).await;
    }
    let deadline = pod::deadline(
        start,
        Instant::now(),
        jiff::Timestamp::now(),
        pod.deletion,
        settings.max_wait,
        settings.shutdown_reserve,
    );
    if deadline <= Instant::now() {
        let msg = format!(
            "the grace period leaves no time: deletionTimestamp minus DRAINWAIT_SHUTDOWN_RESERVE ({}) has passed",
            humantime::format_duration(settings.shutdown_reserve)
        );
        return finish(Outcome::Deadline, start, who, &msg, &[], events).await;
    }
    tracing::info!(pod = %who, deadline_in = %fmt_secs(deadline.saturating_duration_since(Instant::now())), "waiting for the pod to leave its endpoints and load balancer");

    let ep_progress = Progress::new("endpoints");
    let aws_progress = Progress::new("aws");
    let gates = [ep_progress.clone(), aws_progress.clone()];
    let (view_tx, view_rx) = watch::channel(None);

    let ep_gate = gate(&ep_progress, start, fallback_at, async {
        let gate = endpoints::Gate {
            client: client.clone(),
            namespace: &pod.namespace,
            me: &pod.me,
            services: &settings.services,
            settle: settings.endpoints_settle,
            request_timeout: t,
        };
        endpoints::run(gate, &ep_progress, view_tx)
            .await
            .map(|()| GateEnd::Passed)
    });
    let aws_gate = gate(&aws_progress, start, fallback_at, async {
        if settings.lb == LbMode::None {
            aws_progress.see("DRAINWAIT_LB=none");
            return Ok(GateEnd::Skipped);
        }
        let mut elb = Clients::new(t);
        match aws::discover(&client, &pod, &settings, view_rx, deadline, &mut elb).await? {
            Discovered::Nothing(why) => {
                tracing::info!("no load balancer targets to wait for: {why}");
                aws_progress.see(why);
                Ok(GateEnd::Skipped)
            }
            Discovered::Targets(targets) => {
                tracing::info!(
                    targets = targets.len(),
                    "waiting for load balancer targets to drain"
                );
                aws::poll(&targets, &settings, &mut elb, &aws_progress)
                    .await
                    .map(|()| GateEnd::Passed)
            }
        }
    });

    let ends = tokio::select! {
        ends = async { tokio::join!(ep_gate, aws_gate) } => ends,
        () = sleep_until(deadline) => {
            let pending: Vec<&'static str> = gates.iter().map(Progress::snapshot).filter(|g| g.state == "pending").map(|g| g.gate).collect();
            let msg = format!("deadline reached with gates pending: {}", pending.join(", "));
            return finish(Outcome::Deadline, start, who, &msg, &gates, events).await;
        }
        s = &mut signal => return interrupted(s, start, who, &gates),
    };
    let outcome = overall(&[ends.0, ends.1]);
    let msg = match outcome {
        Outcome::Drained => "out of every endpoint and load balancer target",
        _ => "a signal could not be read: waited DRAINWAIT_FALLBACK_WAIT instead",
    };
    finish(outcome, start, who, msg, &gates, events).await
}

type EventTarget = Option<(kube::Client, String, String, Option<String>)>;

/// Run a gate; when it fails, log why and wait until `fallback_at` instead.
async fn gate(
    progress: &Progress,
    start: Instant,
    fallback_at: Instant,
    body: impl Future<Output = Result<GateEnd, String>>,
) -> GateEnd {
    let end = match body.await {
        Ok(end) => end,
        Err(reason) => {
            let gate = progress.snapshot().gate;
            tracing::warn!(
                gate,
                "{gate} gate cannot read its signal: {reason}; falling back to DRAINWAIT_FALLBACK_WAIT"
            );
            progress.see(reason);
            sleep_until(fallback_at).await;
            GateEnd::Fallback
        }
    };
    progress.end(end.clone(), start);
    end
}

async fn fall_back(
    msg: &str,
    start: Instant,
    until: Instant,
    who: String,
    gates: &[Progress],
    signal: &mut std::pin::Pin<&mut impl Future<Output = Signal>>,
) -> Summary {
    tracing::warn!("{msg}; falling back to waiting DRAINWAIT_FALLBACK_WAIT from start");
    tokio::select! {
        () = sleep_until(until) => {}
        s = signal.as_mut() => return interrupted(s, start, who, gates),
    }
    finish(Outcome::Fallback, start, who, msg, gates, None).await
}

fn interrupted(s: Signal, start: Instant, who: String, gates: &[Progress]) -> Summary {
    let summary = Summary::new(
        s.outcome(),
        start,
        who,
        format!("received {}, exiting at once", s.name()),
        gates,
    );
    summary.log();
    summary
}

async fn finish(
    outcome: Outcome,
    start: Instant,
    who: String,
    msg: &str,
    gates: &[Progress],
    events: EventTarget,
) -> Summary {
    let summary = Summary::new(outcome, start, who, msg, gates);
    summary.log();
    if let Some((client, ns, name, uid)) = events {
        report::publish(
            client,
            &summary,
            &ns,
            &name,
            uid,
            std::time::Duration::from_secs(2),
        )
        .await;
    }
    summary
}

fn fmt_secs(d: std::time::Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}
