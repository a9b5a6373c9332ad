//! What happened: live gate progress, the closing summary, the Kubernetes Event.
//!
//! Each gate writes what it currently sees into its [`Progress`] as it goes,
//! so that when the deadline (or a signal) cuts the wait short the
//! [`Summary`] can still say which gates were pending and what they last saw.
//! The summary is logged as one line and, unless disabled, published as an
//! Event on the pod with kube's `Recorder`; a failed Event write is a warning
//! and never changes the exit code.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde::Serialize;
use tokio::time::Instant;

use crate::decision::{GateEnd, Outcome, TargetStates};

/// Largest Event note the API accepts.
pub const NOTE_LIMIT: usize = 1024;

/// One gate's state, shared between the gate and the reporter.
#[derive(Debug, Clone, Default)]
pub struct Progress(Arc<Mutex<GateReport>>);

/// One gate in the summary.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GateReport {
    /// `endpoints` or `aws`.
    pub gate: &'static str,
    /// `pending`, `passed`, `fallback` or `skipped`.
    pub state: &'static str,
    /// Seconds from start to the gate's end.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds: Option<f64>,
    /// What the gate last saw (or why it fell back).
    pub detail: String,
    /// Load balancer targets and their last state (aws gate).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetReport>,
}

/// A load balancer target in the summary.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TargetReport {
    /// Target group ARN.
    pub target_group: String,
    /// Target id (IP).
    pub id: String,
    /// Target port.
    pub port: u16,
    /// Last state seen, `unknown` before the first answer.
    pub state: String,
}

impl Progress {
    /// A pending gate.
    pub fn new(gate: &'static str) -> Progress {
        Progress(Arc::new(Mutex::new(GateReport {
            gate,
            state: "pending",
            ..Default::default()
        })))
    }

    fn with<R>(&self, f: impl FnOnce(&mut GateReport) -> R) -> R {
        // A poisoned lock only means a panic elsewhere; the data is still a report.
        let mut g = self.0.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut g)
    }

    /// Update what the gate sees (logged at debug when it changes).
    pub fn see(&self, detail: impl Into<String>) {
        let detail = detail.into();
        self.with(|g| {
            if g.detail != detail {
                tracing::debug!(gate = g.gate, %detail, "gate observation");
                g.detail = detail;
            }
        });
    }

    /// Record the targets' latest states.
    pub fn targets(&self, states: &TargetStates) {
        let list = states
            .iter()
            .map(|((tg, id, port), s)| TargetReport {
                target_group: tg.clone(),
                id: id.clone(),
                port: *port,
                state: match &s.reason {
                    Some(r) => format!("{} ({r})", s.state),
                    None => s.state.clone(),
                },
            })
            .collect();
        self.with(|g| g.targets = list);
    }

    /// The gate ended.
    pub fn end(&self, end: GateEnd, start: Instant) {
        self.with(|g| {
            g.state = match end {
                GateEnd::Passed => "passed",
                GateEnd::Fallback => "fallback",
                GateEnd::Skipped => "skipped",
            };
            g.seconds = Some(secs(start.elapsed()));
        });
    }

    /// A copy of the current report.
    pub fn snapshot(&self) -> GateReport {
        self.with(|g| g.clone())
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// The closing summary of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    /// drained, not-deleting, pod-gone, deadline, fallback, interrupted.
    pub outcome: &'static str,
    /// The process exit code.
    pub exit_code: u8,
    /// Seconds from start.
    pub seconds: f64,
    /// `namespace/name`, when known.
    pub pod: String,
    /// Why, in a sentence.
    pub detail: String,
    /// Each gate.
    pub gates: Vec<GateReport>,
    #[serde(skip)]
    outcome_kind: Option<Outcome>,
}

impl Summary {
    /// Build from the outcome and the gates' progress.
    pub fn new(
        outcome: Outcome,
        start: Instant,
        pod: String,
        detail: impl Into<String>,
        gates: &[Progress],
    ) -> Summary {
        Summary {
            outcome: outcome.name(),
            exit_code: outcome.exit_code(),
            seconds: secs(start.elapsed()),
            pod,
            detail: detail.into(),
            gates: gates.iter().map(Progress::snapshot).collect(),
            outcome_kind: Some(outcome),
        }
    }

    /// The outcome.
    pub fn outcome(&self) -> Outcome {
        self.outcome_kind.unwrap_or(Outcome::Fallback)
    }

    /// One human line: outcome, time, each gate's end and time, targets.
    pub fn line(&self) -> String {
        let mut s = format!("{} after {:.1}s", self.outcome, self.seconds);
        if !self.detail.is_empty() {
            s.push_str(&format!(": {}", self.detail));
        }
        for g in &self.gates {
            s.push_str(&format!("; {} {}", g.gate, g.state));
            if let Some(t) = g.seconds {
                s.push_str(&format!(" at {t:.1}s"));
            }
            if !g.detail.is_empty() {
                s.push_str(&format!(" ({})", g.detail));
            }
            if !g.targets.is_empty() {
                let t: Vec<String> = g
                    .targets
                    .iter()
                    .map(|t| {
                        format!(
                            "{}:{}@{} {}",
                            t.id,
                            t.port,
                            short_tg(&t.target_group),
                            t.state
                        )
                    })
                    .collect();
                s.push_str(&format!(" targets [{}]", t.join(", ")));
            }
        }
        s
    }

    /// Log the summary as one line; with JSON logs the whole summary rides along as a field.
    pub fn log(&self) {
        let json = crate::logging::is_json()
            .then(|| serde_json::to_string(self).ok())
            .flatten();
        let line = self.line();
        if self.outcome().is_normal() {
            tracing::info!(
                outcome = self.outcome,
                exit_code = self.exit_code,
                seconds = self.seconds,
                summary = json,
                "{line}"
            );
        } else {
            tracing::warn!(
                outcome = self.outcome,
                exit_code = self.exit_code,
                seconds = self.seconds,
                summary = json,
                "{line}"
            );
        }
    }

    /// The Event note: the summary line cut to [`NOTE_LIMIT`] bytes on a char boundary.
    pub fn note(&self) -> String {
        truncate(&self.line(), NOTE_LIMIT)
    }
}

/// `targetgroup/NAME/ID` → `NAME`, so notes stay short.
fn short_tg(arn: &str) -> &str {
    arn.rsplit_once(":targetgroup/")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or(arn)
}

/// Cut `s` to at most `limit` bytes, ending with `…` when cut.
pub fn truncate(s: &str, limit: usize) -> String {
    if s.len() <= limit {
        return s.to_string();
    }
    let ell = "…";
    let mut end = limit - ell.len();
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}{ell}", &s[..end])
}

/// Publish the summary as an Event on the pod. Failures are logged, never returned.
pub async fn publish(
    client: kube::Client,
    summary: &Summary,
    namespace: &str,
    name: &str,
    uid: Option<String>,
    limit: Duration,
) {
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "drainwait".into(),
            instance: Some(name.to_string()),
        },
    );
    let reference = k8s_openapi::api::core::v1::ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Pod".into()),
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        uid,
        ..Default::default()
    };
    let event = Event {
        type_: if summary.outcome().is_normal() {
            EventType::Normal
        } else {
            EventType::Warning
        },
        reason: summary.outcome().reason().into(),
        note: Some(summary.note()),
        action: "PreStopDrain".into(),
        secondary: None,
    };
    match tokio::time::timeout(limit, recorder.publish(&event, &reference)).await {
        Ok(Ok(())) => tracing::debug!("event recorded"),
        Ok(Err(e)) if crate::k8s::is_forbidden(&e) => tracing::warn!(
            "could not record the Event: {}; add the RBAC rule {} (or set DRAINWAIT_EVENTS=false)",
            crate::k8s::message(&e),
            crate::k8s::RULE_EVENTS
        ),
        Ok(Err(e)) => tracing::warn!("could not record the Event: {}", crate::k8s::message(&e)),
        Err(_) => tracing::warn!(
            "could not record the Event: no answer within {}",
            humantime::format_duration(limit)
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decision::TargetState;

    #[test]
    fn truncate_respects_char_boundaries() {
        let s = "é".repeat(600); // 1200 bytes
        let t = truncate(&s, NOTE_LIMIT);
        assert!(t.len() <= NOTE_LIMIT && t.ends_with('…'));
        assert_eq!(truncate("short", NOTE_LIMIT), "short");
    }

    #[test]
    fn summary_line_names_gates_and_targets_and_note_fits() {
        let start = Instant::now();
        let ep = Progress::new("endpoints");
        ep.see("out of rotation");
        ep.end(GateEnd::Passed, start);
        let aws = Progress::new("aws");
        let mut states = TargetStates::new();
        for i in 0..100 {
            states.insert(
                (
                    "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/argo/abc".into(),
                    format!("10.0.0.{i}"),
                    2746,
                ),
                TargetState {
                    state: "draining".into(),
                    reason: Some("Target.DeregistrationInProgress".into()),
                },
            );
        }
        aws.targets(&states);
        aws.see("waiting for 100 targets");
        let s = Summary::new(
            Outcome::Deadline,
            start,
            "ns/p".into(),
            "deadline reached",
            &[ep, aws],
        );
        let line = s.line();
        assert!(line.starts_with("deadline after"), "{line}");
        assert!(
            line.contains("endpoints passed") && line.contains("aws pending"),
            "{line}"
        );
        assert!(line.contains("10.0.0.1:2746@argo draining"), "{line}");
        assert!(s.note().len() <= NOTE_LIMIT);
        assert_eq!(s.exit_code, 1);
    }
}
