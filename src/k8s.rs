//! Talking to the Kubernetes API: client set-up, error predicates, retries.
//!
//! Every call drainwait makes goes through [`call`]: it runs under its own
//! timeout, transient failures (5xx, 429, connection errors, timeouts) are
//! retried with a short jittered back-off ([`FastBackoff`]) until a caller's
//! instant, and anything else comes back as a [`CallError`] the caller
//! branches on. The status predicates live here and nowhere else.

use std::future::Future;
use std::time::Duration;

use kube::runtime::utils::Backoff;
use tokio::time::{Instant, sleep_until, timeout_at};

/// Server-side timeout of each watch request; the stream is re-opened after it.
pub const WATCH_TIMEOUT_SECS: u32 = 30;

/// Build a client with kube-rs' standard inference (KUBECONFIG, ~/.kube/config,
/// else in-cluster) and our own connect/read timeouts. Returns the client and
/// the namespace of the kubeconfig context (or the in-cluster one).
pub async fn client(request_timeout: Duration) -> Result<(kube::Client, String), String> {
    let mut config = kube::Config::infer()
        .await
        .map_err(|e| format!("cannot find Kubernetes credentials ({e}): run in a pod with a service account, or set KUBECONFIG"))?;
    config.connect_timeout = Some(request_timeout);
    // Reads on a watch legitimately wait for the server-side watch timeout.
    config.read_timeout =
        Some(Duration::from_secs(u64::from(WATCH_TIMEOUT_SECS)) + request_timeout);
    config.write_timeout = Some(request_timeout);
    let ns = config.default_namespace.clone();
    let client = kube::Client::try_from(config)
        .map_err(|e| format!("cannot build the Kubernetes client: {e}"))?;
    Ok((client, ns))
}

/// The HTTP status of an API error, if the error is one.
pub fn status_code(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// 403: RBAC denies it. Never transient.
pub fn is_forbidden(e: &kube::Error) -> bool {
    status_code(e) == Some(403)
}

/// 404: no such object (or resource type).
pub fn is_not_found(e: &kube::Error) -> bool {
    status_code(e) == Some(404)
}

/// 410: the resourceVersion is too old; relist.
pub fn is_gone(e: &kube::Error) -> bool {
    status_code(e) == Some(410)
}

/// Worth retrying: server errors, throttling, and failures to connect or read.
pub fn is_transient(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code >= 500 || s.code == 429,
        kube::Error::HyperError(_) | kube::Error::Service(_) | kube::Error::ReadEvents(_) => true,
        _ => false,
    }
}

/// The server's message for an API error, else the error itself.
pub fn message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => format!("{} ({})", s.message, s.code),
        other => other.to_string(),
    }
}

/// An RBAC rule, as SPEC's least-privilege list names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    /// API group ("" for core).
    pub group: &'static str,
    /// Resource (plural).
    pub resource: &'static str,
    /// Verbs.
    pub verbs: &'static [&'static str],
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{{apiGroups: [\"{}\"], resources: [\"{}\"], verbs: [{}]}}",
            self.group,
            self.resource,
            self.verbs
                .iter()
                .map(|v| format!("\"{v}\""))
                .collect::<Vec<_>>()
                .join(", ")
        )
    }
}

/// `pods` get.
pub const RULE_PODS: Rule = Rule {
    group: "",
    resource: "pods",
    verbs: &["get"],
};
/// `services` get.
pub const RULE_SERVICES: Rule = Rule {
    group: "",
    resource: "services",
    verbs: &["get"],
};
/// `endpointslices` list, watch.
pub const RULE_SLICES: Rule = Rule {
    group: "discovery.k8s.io",
    resource: "endpointslices",
    verbs: &["list", "watch"],
};
/// `events` create, patch.
pub const RULE_EVENTS: Rule = Rule {
    group: "events.k8s.io",
    resource: "events",
    verbs: &["create", "patch"],
};
/// `targetgroupbindings` list, watch.
pub const RULE_TGB: Rule = Rule {
    group: "elbv2.k8s.aws",
    resource: "targetgroupbindings",
    verbs: &["list", "watch"],
};

/// What a failed call means to its caller.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// 403.
    #[error(
        "forbidden: {message}; add the RBAC rule {rule} to a Role bound to the pod's service account (the drainwait chart grants it)"
    )]
    Forbidden {
        /// The server's message (names the service account).
        message: String,
        /// The rule that is missing.
        rule: Rule,
    },
    /// 404.
    #[error("not found: {0}")]
    NotFound(String),
    /// Any other non-transient failure.
    #[error("{0}")]
    Failed(String),
    /// Transient failures until the caller's limit.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: String,
    },
}

/// Exponential back-off for API retries: 100 ms, doubling, capped at 2 s, ±20 % jitter.
/// kube-rs' default starts at 0.8 s, too slow for a drain that must react in ~100 ms.
#[derive(Debug, Clone)]
pub struct FastBackoff {
    next: Duration,
}

impl FastBackoff {
    const FIRST: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(2);
}

impl Default for FastBackoff {
    fn default() -> Self {
        FastBackoff { next: Self::FIRST }
    }
}

impl Iterator for FastBackoff {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        let base = self.next;
        self.next = (self.next * 2).min(Self::CAP);
        Some(jitter(base, 0.2))
    }
}

impl Backoff for FastBackoff {
    fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

/// `d` scaled by a random factor in [1 - spread, 1 + spread].
pub fn jitter(d: Duration, spread: f64) -> Duration {
    let f = 1.0 + spread * (rand::random::<f64>() * 2.0 - 1.0);
    d.mul_f64(f.max(0.0))
}

/// Run `f` under `per_call` timeout, retrying transient failures until `until`.
/// `rule` names the RBAC rule a 403 would be missing.
pub async fn call<T, F, Fut>(
    rule: Rule,
    per_call: Duration,
    until: Instant,
    mut f: F,
) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, kube::Error>>,
{
    let mut backoff = FastBackoff::default();
    let mut attempts = 0;
    loop {
        attempts += 1;
        // An attempt never outlives the caller's limit.
        let attempt_end = (Instant::now() + per_call).min(until);
        let answer = timeout_at(attempt_end, f()).await;
        crate::metrics::kube_attempt(rule.resource, &answer);
        let last = match answer {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if is_forbidden(&e) => {
                return Err(CallError::Forbidden {
                    message: message(&e),
                    rule,
                });
            }
            Ok(Err(e)) if is_not_found(&e) => return Err(CallError::NotFound(message(&e))),
            Ok(Err(e)) if !is_transient(&e) => return Err(CallError::Failed(message(&e))),
            Ok(Err(e)) => message(&e),
            Err(_) if attempt_end >= until => {
                return Err(CallError::GaveUp {
                    attempts,
                    last: "no answer before the time limit".into(),
                });
            }
            Err(_) => format!("no answer within {}", humantime::format_duration(per_call)),
        };
        let retry_at = Instant::now() + backoff.next().unwrap_or(FastBackoff::CAP);
        if retry_at >= until {
            return Err(CallError::GaveUp { attempts, last });
        }
        tracing::debug!(attempt = attempts, error = %last, "retrying Kubernetes request");
        sleep_until(retry_at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_starts_small_and_caps() {
        let mut b = FastBackoff::default();
        let first = b.next().unwrap_or_default();
        assert!(
            first >= Duration::from_millis(80) && first <= Duration::from_millis(120),
            "{first:?}"
        );
        let later: Vec<Duration> = b.by_ref().take(10).collect();
        assert!(later.iter().all(|d| *d <= Duration::from_millis(2400)));
        b.reset();
        assert!(b.next().unwrap_or_default() <= Duration::from_millis(120));
    }

    #[test]
    fn rule_reads_like_rbac_yaml() {
        assert_eq!(
            RULE_SLICES.to_string(),
            r#"{apiGroups: ["discovery.k8s.io"], resources: ["endpointslices"], verbs: ["list", "watch"]}"#
        );
    }

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            message: format!("code {code}"),
            ..Default::default()
        }))
    }

    #[test]
    fn predicates() {
        assert!(is_forbidden(&api(403)) && !is_transient(&api(403)));
        assert!(is_not_found(&api(404)) && is_gone(&api(410)));
        assert!(is_transient(&api(500)) && is_transient(&api(503)) && is_transient(&api(429)));
        assert!(!is_transient(&api(400)));
    }

    #[tokio::test(start_paused = true)]
    async fn call_retries_transient_then_succeeds() {
        let mut n = 0;
        let r = call(
            RULE_PODS,
            Duration::from_secs(1),
            Instant::now() + Duration::from_secs(10),
            || {
                n += 1;
                let fail = n < 3;
                async move { if fail { Err(api(500)) } else { Ok(n) } }
            },
        )
        .await;
        assert_eq!(r.ok(), Some(3));
    }

    #[tokio::test(start_paused = true)]
    async fn call_stops_on_403_with_rule_and_gives_up_at_limit() {
        let r: Result<(), _> = call(
            RULE_SLICES,
            Duration::from_secs(1),
            Instant::now() + Duration::from_secs(10),
            || async { Err(api(403)) },
        )
        .await;
        let msg = r.unwrap_err().to_string();
        assert!(
            msg.contains("endpointslices") && msg.contains("\"watch\""),
            "{msg}"
        );

        let start = Instant::now();
        let r: Result<(), _> = call(
            RULE_PODS,
            Duration::from_millis(300),
            start + Duration::from_secs(3),
            std::future::pending::<Result<(), kube::Error>>,
        )
        .await;
        assert!(matches!(r, Err(CallError::GaveUp { .. })));
        assert!(Instant::now() <= start + Duration::from_secs(3));
    }
}
