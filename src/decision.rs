//! The drain decision, pure: EndpointSlices, target states and a clock in, state out.
//!
//! Nothing here talks to a server. The gates in [`crate::endpoints`] and
//! [`crate::aws`] feed what they observe into these functions and act on the
//! answer, so every rule of SPEC's "The wait, precisely" that is about
//! *deciding* (whose endpoint is this, is it in rotation, is a target out,
//! when does a settle end, what is the overall outcome) is tested here with
//! plain `#[test]`s.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use tokio::time::Instant;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// This pod, as endpoints refer to it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Me {
    /// metadata.uid
    pub uid: Option<String>,
    /// metadata.name
    pub name: String,
    /// status.podIPs
    pub ips: Vec<String>,
}

/// One of this pod's endpoints, as a Service's EndpointSlice lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MyEndpoint {
    /// The Service (from the slice's `kubernetes.io/service-name` label).
    pub service: String,
    /// The EndpointSlice name.
    pub slice: String,
    /// Whether the load balancer path may still send traffic here.
    pub in_rotation: bool,
    /// The slice's ports: (Service port name, pod port number).
    pub ports: Vec<(String, u16)>,
}

/// Is this endpoint this pod's? By targetRef (uid when both sides have one,
/// else name); by address only when the endpoint has no targetRef.
fn is_mine(ep: &k8s_openapi::api::discovery::v1::Endpoint, me: &Me) -> bool {
    match &ep.target_ref {
        Some(r) => {
            if r.kind.as_deref().is_some_and(|k| k != "Pod") {
                return false;
            }
            match (&r.uid, &me.uid) {
                (Some(theirs), Some(mine)) if !theirs.is_empty() && !mine.is_empty() => {
                    theirs == mine
                }
                _ => r.name.as_deref() == Some(me.name.as_str()),
            }
        }
        None => ep.addresses.iter().any(|a| me.ips.iter().any(|ip| ip == a)),
    }
}

/// Every endpoint of this pod across the given slices.
pub fn my_endpoints<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    me: &Me,
) -> Vec<MyEndpoint> {
    let mut out = Vec::new();
    for slice in slices {
        let service = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
            .cloned()
            .unwrap_or_default();
        let ports: Vec<(String, u16)> = slice
            .ports
            .iter()
            .flatten()
            .filter_map(|p| {
                let port = u16::try_from(p.port?).ok()?;
                Some((p.name.clone().unwrap_or_default(), port))
            })
            .collect();
        for ep in slice.endpoints.iter().filter(|ep| is_mine(ep, me)) {
            let cond = ep.conditions.as_ref();
            // ready unset counts as ready; terminating endpoints are out even when
            // ready (publishNotReadyAddresses keeps ready=true while terminating).
            let ready = cond.and_then(|c| c.ready) != Some(false);
            let terminating = cond.and_then(|c| c.terminating) == Some(true);
            out.push(MyEndpoint {
                service: service.clone(),
                slice: slice.metadata.name.clone().unwrap_or_default(),
                in_rotation: ready && !terminating,
                ports: ports.clone(),
            });
        }
    }
    out
}

/// What the endpoints gate sees in one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EndpointsView {
    /// Services whose slices list this pod at all.
    pub services: BTreeSet<String>,
    /// Services through which this pod is still in rotation.
    pub in_rotation_via: BTreeSet<String>,
}

impl EndpointsView {
    /// Summarise this pod's endpoints.
    pub fn of(mine: &[MyEndpoint]) -> EndpointsView {
        EndpointsView {
            services: mine.iter().map(|e| e.service.clone()).collect(),
            in_rotation_via: mine
                .iter()
                .filter(|e| e.in_rotation)
                .map(|e| e.service.clone())
                .collect(),
        }
    }

    /// True while any of this pod's endpoints is in rotation.
    pub fn in_rotation(&self) -> bool {
        !self.in_rotation_via.is_empty()
    }
}

/// The pod's port for a Service port, looked up in that Service's slices.
/// `service_port_name` is the name of the Service port (empty for an unnamed
/// single port). Ambiguous (two different numbers) or absent: `Err` with what was seen.
pub fn pod_port(
    mine: &[MyEndpoint],
    service: &str,
    service_port_name: &str,
) -> Result<u16, String> {
    let found: BTreeSet<u16> = mine
        .iter()
        .filter(|e| e.service == service)
        .flat_map(|e| e.ports.iter())
        .filter(|(name, _)| name == service_port_name)
        .map(|(_, port)| *port)
        .collect();
    match found.len() {
        1 => Ok(*found.iter().next().unwrap_or(&0)),
        0 => Err(format!(
            "no port named {service_port_name:?} in Service {service:?}'s EndpointSlices for this pod"
        )),
        _ => Err(format!(
            "port {service_port_name:?} of Service {service:?} maps to several pod ports {found:?}"
        )),
    }
}

/// The pod's only port across all its endpoints, for explicit target group ARNs.
pub fn only_pod_port(mine: &[MyEndpoint]) -> Result<u16, String> {
    let found: BTreeSet<u16> = mine
        .iter()
        .flat_map(|e| e.ports.iter().map(|(_, p)| *p))
        .collect();
    match found.len() {
        1 => Ok(*found.iter().next().unwrap_or(&0)),
        0 => Err("this pod has no port in any EndpointSlice".into()),
        _ => Err(format!("this pod serves several ports {found:?}")),
    }
}

/// Is a load balancer target out of rotation? `draining`, `unhealthy.draining`
/// and `unused` are; so is any state with reason `Target.NotRegistered`.
pub fn target_out(state: &str, reason: Option<&str>) -> bool {
    matches!(state, "draining" | "unhealthy.draining" | "unused")
        || reason == Some("Target.NotRegistered")
}

/// A settle timer: starts when the gate's condition is first seen true,
/// resets when it turns false again.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Settle {
    out_since: Option<Instant>,
}

impl Settle {
    /// Record one observation.
    pub fn observe(&mut self, out: bool, now: Instant) {
        if out {
            self.out_since.get_or_insert(now);
        } else {
            self.out_since = None;
        }
    }

    /// When the condition was first seen true (in its current run).
    pub fn out_since(&self) -> Option<Instant> {
        self.out_since
    }

    /// When the gate passes, if the condition currently holds.
    pub fn passes_at(&self, settle: Duration) -> Option<Instant> {
        self.out_since.map(|t| t + settle)
    }
}

/// Per-target latest state, keyed by (target group ARN, id, port).
pub type TargetStates = BTreeMap<(String, String, u16), TargetState>;

/// A target's last known state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetState {
    /// ELBv2 state, or `invalid` when DescribeTargetHealth answered InvalidTarget for it alone.
    pub state: String,
    /// ELBv2 reason code, if any.
    pub reason: Option<String>,
}

impl TargetState {
    /// Is this target out of rotation?
    pub fn is_out(&self) -> bool {
        self.state == "invalid" || target_out(&self.state, self.reason.as_deref())
    }
}

/// All targets out (and at least one known)?
pub fn all_targets_out(states: &TargetStates) -> bool {
    !states.is_empty() && states.values().all(TargetState::is_out)
}

/// How one gate ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GateEnd {
    /// The signal said the pod is out, and the settle ran out.
    Passed,
    /// The signal could not be read; the gate waited the fallback time instead.
    Fallback,
    /// The gate did not apply (e.g. no load balancer target).
    Skipped,
}

/// The outcome of a drain (SPEC step 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Every gate passed.
    Drained,
    /// The pod is not being deleted and `DRAINWAIT_IF_NOT_DELETING=exit`.
    NotDeleting,
    /// The pod no longer exists.
    PodGone,
    /// The deadline came first.
    Deadline,
    /// A gate (or the pod lookup) fell back to the fixed wait.
    Fallback,
    /// The configuration was invalid; the fixed fallback wait was used.
    InvalidConfig,
    /// SIGINT.
    Interrupted,
    /// SIGTERM.
    Terminated,
}

impl Outcome {
    /// The process exit code (SPEC "Exit codes").
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Drained | Outcome::NotDeleting | Outcome::PodGone => 0,
            Outcome::Deadline | Outcome::Fallback => 1,
            Outcome::InvalidConfig => 2,
            Outcome::Interrupted => 130,
            Outcome::Terminated => 143,
        }
    }

    /// The name used in logs and reports.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Drained => "drained",
            Outcome::NotDeleting => "not-deleting",
            Outcome::PodGone => "pod-gone",
            Outcome::Deadline => "deadline",
            Outcome::Fallback | Outcome::InvalidConfig => "fallback",
            Outcome::Interrupted | Outcome::Terminated => "interrupted",
        }
    }

    /// PascalCase Event reason.
    pub fn reason(self) -> &'static str {
        match self {
            Outcome::Drained => "Drained",
            Outcome::NotDeleting => "NotDeleting",
            Outcome::PodGone => "PodGone",
            Outcome::Deadline => "DrainDeadlineReached",
            Outcome::Fallback => "DrainFallback",
            Outcome::InvalidConfig => "DrainInvalidConfig",
            Outcome::Interrupted | Outcome::Terminated => "DrainInterrupted",
        }
    }

    /// Normal events for the good outcomes, Warning for the rest.
    pub fn is_normal(self) -> bool {
        self.exit_code() == 0
    }
}

/// Overall outcome once every gate has ended (the deadline case is decided by the caller).
pub fn overall(ends: &[GateEnd]) -> Outcome {
    if ends.contains(&GateEnd::Fallback) {
        Outcome::Fallback
    } else {
        Outcome::Drained
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn me() -> Me {
        Me {
            uid: Some("uid-1".into()),
            name: "argo-server-abc".into(),
            ips: vec!["10.0.0.7".into()],
        }
    }

    fn ep(
        name: Option<&str>,
        uid: Option<&str>,
        ip: &str,
        ready: Option<bool>,
        terminating: Option<bool>,
    ) -> Endpoint {
        Endpoint {
            addresses: vec![ip.into()],
            conditions: Some(EndpointConditions {
                ready,
                serving: None,
                terminating,
            }),
            target_ref: name.map(|n| ObjectReference {
                kind: Some("Pod".into()),
                name: Some(n.into()),
                uid: uid.map(String::from),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn slice(
        service: &str,
        name: &str,
        ports: &[(&str, i32)],
        eps: Vec<Endpoint>,
    ) -> EndpointSlice {
        EndpointSlice {
            metadata: ObjectMeta {
                name: Some(name.into()),
                labels: Some([(SERVICE_NAME_LABEL.to_string(), service.to_string())].into()),
                ..Default::default()
            },
            address_type: "IPv4".into(),
            endpoints: eps,
            ports: Some(
                ports
                    .iter()
                    .map(|(n, p)| EndpointPort {
                        name: Some(n.to_string()),
                        port: Some(*p),
                        ..Default::default()
                    })
                    .collect(),
            ),
        }
    }

    fn view(slices: &[EndpointSlice]) -> EndpointsView {
        EndpointsView::of(&my_endpoints(slices, &me()))
    }

    #[test]
    fn ready_unset_counts_as_ready() {
        let s = slice(
            "argo",
            "argo-1",
            &[("web", 2746)],
            vec![ep(
                Some("argo-server-abc"),
                Some("uid-1"),
                "10.0.0.7",
                None,
                None,
            )],
        );
        assert!(view(&[s]).in_rotation());
    }

    #[test]
    fn not_ready_or_terminating_is_out() {
        let not_ready = slice(
            "argo",
            "a",
            &[],
            vec![ep(
                Some("argo-server-abc"),
                Some("uid-1"),
                "10.0.0.7",
                Some(false),
                Some(true),
            )],
        );
        assert!(!view(&[not_ready]).in_rotation());
        // publishNotReadyAddresses: ready stays true while terminating.
        let pnra = slice(
            "argo",
            "a",
            &[],
            vec![ep(
                Some("argo-server-abc"),
                Some("uid-1"),
                "10.0.0.7",
                Some(true),
                Some(true),
            )],
        );
        let v = view(&[pnra]);
        assert!(!v.in_rotation());
        assert_eq!(v.services, BTreeSet::from(["argo".to_string()]));
    }

    #[test]
    fn uid_beats_name_and_name_is_used_without_uid() {
        // Same name, other uid: a previous pod of a StatefulSet, not us.
        let old = slice(
            "argo",
            "a",
            &[],
            vec![ep(
                Some("argo-server-abc"),
                Some("uid-0"),
                "10.0.0.9",
                Some(true),
                None,
            )],
        );
        assert!(!view(&[old]).in_rotation());
        let by_name = slice(
            "argo",
            "a",
            &[],
            vec![ep(
                Some("argo-server-abc"),
                None,
                "10.0.0.9",
                Some(true),
                None,
            )],
        );
        assert!(view(&[by_name]).in_rotation());
    }

    #[test]
    fn address_only_without_target_ref() {
        let by_ip = slice(
            "ext",
            "e",
            &[],
            vec![ep(None, None, "10.0.0.7", Some(true), None)],
        );
        assert!(view(&[by_ip]).in_rotation());
        // With a targetRef naming another pod, our IP does not make it ours (IP reuse).
        let other = slice(
            "ext",
            "e",
            &[],
            vec![ep(
                Some("other"),
                Some("uid-9"),
                "10.0.0.7",
                Some(true),
                None,
            )],
        );
        assert!(view(&[other]).services.is_empty());
    }

    #[test]
    fn in_rotation_while_any_service_keeps_it() {
        let a = slice(
            "a",
            "a-1",
            &[],
            vec![ep(
                Some("argo-server-abc"),
                Some("uid-1"),
                "10.0.0.7",
                Some(false),
                Some(true),
            )],
        );
        let b = slice(
            "b",
            "b-1",
            &[],
            vec![ep(
                Some("argo-server-abc"),
                Some("uid-1"),
                "10.0.0.7",
                Some(true),
                None,
            )],
        );
        let v = view(&[a, b]);
        assert!(v.in_rotation());
        assert_eq!(v.in_rotation_via, BTreeSet::from(["b".to_string()]));
    }

    #[test]
    fn pod_port_by_service_port_name() {
        let s = slice(
            "argo",
            "a",
            &[("web", 2746), ("metrics", 9090)],
            vec![ep(
                Some("argo-server-abc"),
                Some("uid-1"),
                "10.0.0.7",
                None,
                None,
            )],
        );
        let mine = my_endpoints(std::slice::from_ref(&s), &me());
        assert_eq!(pod_port(&mine, "argo", "web"), Ok(2746));
        assert!(pod_port(&mine, "argo", "grpc").is_err());
        assert!(pod_port(&mine, "other", "web").is_err());
        assert!(only_pod_port(&mine).unwrap_err().contains("several"));
        let single = slice(
            "argo",
            "a",
            &[("", 2746)],
            vec![ep(
                Some("argo-server-abc"),
                Some("uid-1"),
                "10.0.0.7",
                None,
                None,
            )],
        );
        let mine = my_endpoints(&[single], &me());
        assert_eq!(pod_port(&mine, "argo", ""), Ok(2746));
        assert_eq!(only_pod_port(&mine), Ok(2746));
    }

    #[test]
    fn target_states() {
        for (state, reason, out) in [
            ("healthy", None, false),
            ("initial", Some("Elb.RegistrationInProgress"), false),
            ("unhealthy", Some("Target.FailedHealthChecks"), false),
            ("draining", Some("Target.DeregistrationInProgress"), true),
            ("unhealthy.draining", None, true),
            ("unused", Some("Target.NotRegistered"), true),
            ("unavailable", Some("Target.NotRegistered"), true),
            ("unavailable", Some("Target.HealthCheckDisabled"), false),
        ] {
            assert_eq!(target_out(state, reason), out, "{state} {reason:?}");
        }
        let mut states = TargetStates::new();
        assert!(
            !all_targets_out(&states),
            "no target known is not 'all out'"
        );
        states.insert(
            ("tg".into(), "10.0.0.7".into(), 2746),
            TargetState {
                state: "draining".into(),
                reason: None,
            },
        );
        states.insert(
            ("tg2".into(), "10.0.0.7".into(), 2746),
            TargetState {
                state: "invalid".into(),
                reason: None,
            },
        );
        assert!(all_targets_out(&states));
        states.insert(
            ("tg3".into(), "10.0.0.7".into(), 2746),
            TargetState {
                state: "healthy".into(),
                reason: None,
            },
        );
        assert!(!all_targets_out(&states));
    }

    #[test]
    fn settle_counts_from_first_seen_out_and_resets() {
        let t0 = Instant::now();
        let d = Duration::from_secs(2);
        let mut s = Settle::default();
        s.observe(false, t0);
        assert_eq!(s.passes_at(d), None);
        s.observe(true, t0 + Duration::from_secs(1));
        s.observe(true, t0 + Duration::from_secs(2));
        assert_eq!(s.passes_at(d), Some(t0 + Duration::from_secs(3)));
        s.observe(false, t0 + Duration::from_secs(4));
        assert_eq!(s.passes_at(d), None);
        s.observe(true, t0 + Duration::from_secs(5));
        assert_eq!(s.passes_at(d), Some(t0 + Duration::from_secs(7)));
    }

    #[test]
    fn outcomes_and_exit_codes() {
        assert_eq!(
            overall(&[GateEnd::Passed, GateEnd::Skipped]),
            Outcome::Drained
        );
        assert_eq!(
            overall(&[GateEnd::Passed, GateEnd::Fallback]),
            Outcome::Fallback
        );
        let codes: Vec<u8> = [
            Outcome::Drained,
            Outcome::NotDeleting,
            Outcome::PodGone,
            Outcome::Deadline,
            Outcome::Fallback,
            Outcome::InvalidConfig,
            Outcome::Interrupted,
            Outcome::Terminated,
        ]
        .iter()
        .map(|o| o.exit_code())
        .collect();
        assert_eq!(codes, vec![0, 0, 0, 1, 1, 2, 130, 143]);
        assert!(Outcome::Drained.is_normal() && !Outcome::Deadline.is_normal());
    }
}
