//! This pod: who it is, what the API says about it, and the deadline it allows.
//!
//! Identity comes from env (SPEC fallbacks), the rest from one GET of the pod
//! object ([`PodInfo::from_pod`]). [`deadline`] turns the pod's
//! `deletionTimestamp` (wall clock) into a `tokio` instant, so the rest of
//! drainwait only ever compares monotonic instants.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use tokio::time::Instant;

use crate::decision::Me;

/// The service account's namespace file, present in every pod with a token mounted.
pub const SA_NAMESPACE_FILE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// The pod name: the flag/`DRAINWAIT_POD_NAME`, else `POD_NAME`, else `HOSTNAME`.
pub fn resolve_name(
    explicit: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
) -> Option<String> {
    explicit
        .map(String::from)
        .or_else(|| env("POD_NAME"))
        .or_else(|| env("HOSTNAME"))
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// The namespace: the flag/`DRAINWAIT_POD_NAMESPACE`, else `POD_NAMESPACE`, else the
/// service-account namespace file, else the kubeconfig context's namespace.
pub fn resolve_namespace(
    explicit: Option<&str>,
    env: impl Fn(&str) -> Option<String>,
    sa_file: Option<String>,
    kubeconfig_ns: &str,
) -> String {
    explicit
        .map(String::from)
        .or_else(|| env("POD_NAMESPACE"))
        .or(sa_file)
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| kubeconfig_ns.to_string())
}

/// What drainwait needs from the pod object.
#[derive(Debug, Clone)]
pub struct PodInfo {
    /// Namespace.
    pub namespace: String,
    /// Identity as endpoints see it.
    pub me: Me,
    /// When the API server set it (the pod is being deleted).
    pub deletion: Option<Timestamp>,
    /// The pod's grace period (for reports).
    pub grace: Option<i64>,
}

impl PodInfo {
    /// Extract from the pod object.
    pub fn from_pod(pod: &Pod, namespace: &str) -> PodInfo {
        let status = pod.status.as_ref();
        let mut ips: Vec<String> = status
            .and_then(|s| s.pod_ips.as_ref())
            .map(|v| v.iter().map(|i| i.ip.clone()).collect())
            .unwrap_or_default();
        if let Some(ip) = status.and_then(|s| s.pod_ip.clone())
            && !ips.contains(&ip)
        {
            ips.insert(0, ip);
        }
        PodInfo {
            namespace: namespace.to_string(),
            me: Me {
                uid: pod.metadata.uid.clone(),
                name: pod.metadata.name.clone().unwrap_or_default(),
                ips,
            },
            deletion: pod.metadata.deletion_timestamp.as_ref().map(|t| t.0),
            grace: pod.metadata.deletion_grace_period_seconds,
        }
    }

    /// The first IP of the given family (`ipv6` true for IPv6).
    pub fn ip(&self, ipv6: bool) -> Option<&str> {
        self.me
            .ips
            .iter()
            .map(String::as_str)
            .find(|ip| ip.contains(':') == ipv6)
    }
}

/// Deadline = min(start + max_wait, deletionTimestamp − reserve), as an instant.
/// `now`/`now_wall` are the same moment on both clocks.
pub fn deadline(
    start: Instant,
    now: Instant,
    now_wall: Timestamp,
    deletion: Option<Timestamp>,
    max_wait: Duration,
    reserve: Duration,
) -> Instant {
    let cap = start + max_wait;
    let Some(deletion) = deletion else { return cap };
    let until = deletion.duration_since(now_wall);
    let reserve = jiff::SignedDuration::try_from(reserve).unwrap_or(jiff::SignedDuration::MAX);
    let left = until
        .checked_sub(reserve)
        .unwrap_or(jiff::SignedDuration::MIN);
    let by_grace = if left.is_negative() {
        // Already past: `now` minus how far past (clamped at `now` is enough: it is past).
        now
    } else {
        now + Duration::try_from(left).unwrap_or(Duration::ZERO)
    };
    by_grace.min(cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn name_fallbacks() {
        assert_eq!(
            resolve_name(Some("a"), env(&[("POD_NAME", "b")])),
            Some("a".into())
        );
        assert_eq!(
            resolve_name(None, env(&[("POD_NAME", "b"), ("HOSTNAME", "c")])),
            Some("b".into())
        );
        assert_eq!(
            resolve_name(None, env(&[("HOSTNAME", "c")])),
            Some("c".into())
        );
        assert_eq!(resolve_name(None, env(&[])), None);
    }

    #[test]
    fn namespace_fallbacks() {
        assert_eq!(
            resolve_namespace(
                Some("x"),
                env(&[("POD_NAMESPACE", "y")]),
                Some("z".into()),
                "k"
            ),
            "x"
        );
        assert_eq!(
            resolve_namespace(None, env(&[("POD_NAMESPACE", "y")]), Some("z".into()), "k"),
            "y"
        );
        assert_eq!(
            resolve_namespace(None, env(&[]), Some("z\n".into()), "k"),
            "z"
        );
        assert_eq!(resolve_namespace(None, env(&[]), None, "k"), "k");
    }

    #[test]
    fn deadline_is_the_earlier_of_cap_and_grace_minus_reserve() {
        let start = Instant::now();
        let now = start + Duration::from_secs(1);
        let wall: Timestamp = "2026-01-01T00:00:00Z".parse().expect("ts");
        let s = Duration::from_secs;
        // Deleted with 30 s grace: 30 - 5 reserve = 25 s from now.
        let del = wall + jiff::SignedDuration::from_secs(30);
        assert_eq!(
            deadline(start, now, wall, Some(del), s(300), s(5)),
            now + s(25)
        );
        // MAX_WAIT smaller.
        assert_eq!(
            deadline(start, now, wall, Some(del), s(10), s(5)),
            start + s(10)
        );
        // Not deleting: the cap.
        assert_eq!(
            deadline(start, now, wall, None, s(300), s(5)),
            start + s(300)
        );
        // Already past.
        let past = wall + jiff::SignedDuration::from_secs(3);
        assert!(deadline(start, now, wall, Some(past), s(300), s(5)) <= now);
    }

    #[test]
    fn pod_info_ips_and_family() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "uid": "u", "deletionTimestamp": "2026-01-01T00:00:00Z", "deletionGracePeriodSeconds": 30},
            "status": {"podIP": "10.0.0.7", "podIPs": [{"ip": "10.0.0.7"}, {"ip": "fd00::7"}]}
        }))
        .expect("pod");
        let info = PodInfo::from_pod(&pod, "ns");
        assert_eq!(info.me.ips, vec!["10.0.0.7", "fd00::7"]);
        assert_eq!(info.ip(false), Some("10.0.0.7"));
        assert_eq!(info.ip(true), Some("fd00::7"));
        assert_eq!(info.grace, Some(30));
        assert!(info.deletion.is_some());
    }
}
