//! Process-wide counters and histograms, rendered in the Prometheus text format.
//!
//! Data flow: the code that does the work calls one-line hooks —
//! [`kube_attempt`] in [`crate::k8s::call`], [`aws_attempt`] around the ELBv2
//! calls, [`watch_error`] / [`watch_restart`] in the endpoints gate,
//! [`drain_finished`] and [`http_request`] in [`crate::serve`] — which update
//! one global registry behind a std `Mutex` (held for a map update, never
//! across an await). `drainwait serve` renders it on `GET /metrics`
//! ([`render`]); in `wait` and `check` nothing reads it, and the cost is a few
//! map updates per request.
//!
//! Label values that come from outside (AWS error codes) are reduced to
//! `[A-Za-z0-9._-]` and every family is capped at [`MAX_SERIES`] series
//! (later new label sets are counted under `other`), so a misbehaving
//! endpoint cannot grow memory or the scrape without bound.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Mutex, MutexGuard};

use aws_sdk_elasticloadbalancingv2::error::{ProvideErrorMetadata, SdkError};
use tokio::time::error::Elapsed;

use crate::report::Summary;

/// Most series one family may hold; further label sets are folded into `other`.
pub const MAX_SERIES: usize = 64;

/// Buckets (seconds) of the drain and gate duration histograms: from an
/// instant pass to the 5 min MAX_WAIT default and beyond.
const DURATION_BUCKETS: &[f64] = &[
    0.5, 1.0, 2.0, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0,
];

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
    Histogram(&'static [f64]),
}

struct Family {
    name: &'static str,
    help: &'static str,
    kind: Kind,
}

// Indexes into FAMILIES, in exposition order.
const BUILD_INFO: usize = 0;
const DRAINS: usize = 1;
const DRAIN_RUNNING: usize = 2;
const DRAIN_SECONDS: usize = 3;
const GATE_SECONDS: usize = 4;
const KUBE_REQUESTS: usize = 5;
const KUBE_ERRORS: usize = 6;
const WATCH_ERRORS: usize = 7;
const WATCH_RESTARTS: usize = 8;
const AWS_REQUESTS: usize = 9;
const AWS_THROTTLES: usize = 10;
const AWS_ERRORS: usize = 11;
const HTTP_REQUESTS: usize = 12;

#[rustfmt::skip]
const FAMILIES: [Family; 13] = [
    Family { name: "drainwait_build_info", help: "Always 1; the version label says which drainwait this is.", kind: Kind::Gauge },
    Family { name: "drainwait_drains_total", help: "Finished drains by outcome (drained, not-deleting, pod-gone, deadline, fallback).", kind: Kind::Counter },
    Family { name: "drainwait_drain_running", help: "1 while a drain is running.", kind: Kind::Gauge },
    Family { name: "drainwait_drain_duration_seconds", help: "Time from the drain request to its outcome.", kind: Kind::Histogram(DURATION_BUCKETS) },
    Family { name: "drainwait_gate_duration_seconds", help: "Time from the drain request to each gate's end, by gate and how it ended.", kind: Kind::Histogram(DURATION_BUCKETS) },
    Family { name: "drainwait_kubernetes_requests_total", help: "Kubernetes API request attempts (GET, LIST, access reviews) by resource; the EndpointSlice watch is counted by its errors and restarts.", kind: Kind::Counter },
    Family { name: "drainwait_kubernetes_errors_total", help: "Failed Kubernetes API request attempts by resource and kind of failure.", kind: Kind::Counter },
    Family { name: "drainwait_kubernetes_watch_errors_total", help: "Errors reported by the EndpointSlice watch, by kind.", kind: Kind::Counter },
    Family { name: "drainwait_kubernetes_watch_restarts_total", help: "Times the EndpointSlice watch was started over, by reason.", kind: Kind::Counter },
    Family { name: "drainwait_aws_requests_total", help: "ELBv2 request attempts by action.", kind: Kind::Counter },
    Family { name: "drainwait_aws_throttles_total", help: "ELBv2 requests answered with throttling, by action.", kind: Kind::Counter },
    Family { name: "drainwait_aws_errors_total", help: "Failed ELBv2 requests other than throttling, by action and error code.", kind: Kind::Counter },
    Family { name: "drainwait_http_requests_total", help: "Requests to drainwait serve, by path and status code.", kind: Kind::Counter },
];

type Labels = Vec<(&'static str, String)>;

enum Value {
    Number(f64),
    Histogram {
        buckets: Vec<u64>,
        sum: f64,
        count: u64,
    },
}

/// Series keyed by family index, then label set: the BTreeMap keeps the exposition order stable.
static REGISTRY: Mutex<BTreeMap<(usize, Labels), Value>> = Mutex::new(BTreeMap::new());

fn registry() -> MutexGuard<'static, BTreeMap<(usize, Labels), Value>> {
    // A panic while counting leaves numbers, not broken invariants: keep going.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// The key for a new or existing series, folded into `other` when the family is full.
fn key(
    reg: &BTreeMap<(usize, Labels), Value>,
    family: usize,
    labels: &[(&'static str, &str)],
) -> (usize, Labels) {
    let owned: Labels = labels.iter().map(|(k, v)| (*k, (*v).to_string())).collect();
    let k = (family, owned);
    if reg.contains_key(&k) {
        return k;
    }
    let in_family = reg
        .range((family, Vec::new())..(family + 1, Vec::new()))
        .count();
    if in_family < MAX_SERIES {
        return k;
    }
    (
        family,
        labels
            .iter()
            .map(|(k, _)| (*k, "other".to_string()))
            .collect(),
    )
}

fn add(family: usize, labels: &[(&'static str, &str)], by: f64) {
    let mut reg = registry();
    let k = key(&reg, family, labels);
    if let Value::Number(n) = reg.entry(k).or_insert(Value::Number(0.0)) {
        *n += by;
    }
}

fn set(family: usize, labels: &[(&'static str, &str)], to: f64) {
    let mut reg = registry();
    let k = key(&reg, family, labels);
    reg.insert(k, Value::Number(to));
}

fn observe(family: usize, labels: &[(&'static str, &str)], v: f64) {
    let Kind::Histogram(bounds) = FAMILIES[family].kind else {
        return;
    };
    let mut reg = registry();
    let k = key(&reg, family, labels);
    let entry = reg.entry(k).or_insert_with(|| Value::Histogram {
        buckets: vec![0; bounds.len()],
        sum: 0.0,
        count: 0,
    });
    if let Value::Histogram {
        buckets,
        sum,
        count,
    } = entry
    {
        // Buckets are stored non-cumulative; render adds them up.
        if let Some(i) = bounds.iter().position(|b| v <= *b) {
            buckets[i] += 1;
        }
        *sum += v;
        *count += 1;
    }
}

/// Is this ELBv2 error code a throttling answer?
pub fn is_throttle_code(code: &str) -> bool {
    matches!(
        code,
        "Throttling" | "ThrottlingException" | "RequestLimitExceeded"
    )
}

/// Kind of a failed Kubernetes request, as a label value.
fn kube_error_kind(e: &kube::Error) -> &'static str {
    match e {
        kube::Error::Api(s) => match s.code {
            403 => "forbidden",
            404 => "not_found",
            410 => "gone",
            429 => "throttled",
            c if c >= 500 => "server_error",
            _ => "client_error",
        },
        kube::Error::HyperError(_) | kube::Error::Service(_) => "connection",
        kube::Error::ReadEvents(_) => "read",
        _ => "other",
    }
}

/// One attempt of [`crate::k8s::call`]: counts the request, and its failure by kind.
pub fn kube_attempt<T>(resource: &'static str, r: &Result<Result<T, kube::Error>, Elapsed>) {
    add(KUBE_REQUESTS, &[("resource", resource)], 1.0);
    let kind = match r {
        Ok(Ok(_)) => return,
        Ok(Err(e)) => kube_error_kind(e),
        Err(_) => "timeout",
    };
    add(KUBE_ERRORS, &[("resource", resource), ("kind", kind)], 1.0);
}

/// An error item from the EndpointSlice watch stream.
pub fn watch_error(e: &kube::runtime::watcher::Error) {
    use kube::runtime::watcher::Error as W;
    let kind = match e {
        W::InitialListFailed(e) | W::WatchStartFailed(e) | W::WatchFailed(e) => kube_error_kind(e),
        W::WatchError(s) if s.code == 410 => "gone",
        W::WatchError(_) => "stream_error",
        _ => "other",
    };
    add(
        WATCH_ERRORS,
        &[("resource", "endpointslices"), ("kind", kind)],
        1.0,
    );
}

/// The EndpointSlice watch is started over (`stalled_list`, `stream_end`, `gone`).
pub fn watch_restart(reason: &'static str) {
    add(
        WATCH_RESTARTS,
        &[("resource", "endpointslices"), ("reason", reason)],
        1.0,
    );
}

/// Keep only characters that are safe and meaningful in an error code.
fn sanitize(code: &str) -> String {
    let s: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    if s.is_empty() { "unknown".into() } else { s }
}

/// One ELBv2 call (`DescribeTargetHealth`, `DescribeTargetGroups`) under a timeout:
/// counts the request, throttling, and other failures by error code.
pub fn aws_attempt<O, E: ProvideErrorMetadata, R>(
    action: &'static str,
    r: &Result<Result<O, SdkError<E, R>>, Elapsed>,
) {
    add(AWS_REQUESTS, &[("action", action)], 1.0);
    let code = match r {
        Ok(Ok(_)) => return,
        Err(_) => "timeout".to_string(),
        Ok(Err(e)) => match e.code() {
            Some(c) if is_throttle_code(c) => {
                add(AWS_THROTTLES, &[("action", action)], 1.0);
                return;
            }
            Some(c) => sanitize(c),
            // No code: the request never got an AWS answer (connection, credentials, timeout).
            None => match e {
                SdkError::TimeoutError(_) => "timeout".into(),
                SdkError::DispatchFailure(_) => "dispatch_failure".into(),
                SdkError::ConstructionFailure(_) => "construction_failure".into(),
                _ => "no_code".into(),
            },
        },
    };
    add(AWS_ERRORS, &[("action", action), ("code", &code)], 1.0);
}

/// A drain started (`true`) or ended (`false`).
pub fn drain_running(running: bool) {
    set(DRAIN_RUNNING, &[], if running { 1.0 } else { 0.0 });
}

/// A drain finished: its outcome, its duration and each gate's.
pub fn drain_finished(summary: &Summary) {
    add(DRAINS, &[("outcome", summary.outcome)], 1.0);
    observe(
        DRAIN_SECONDS,
        &[("outcome", summary.outcome)],
        summary.seconds,
    );
    for g in &summary.gates {
        if let Some(s) = g.seconds {
            observe(GATE_SECONDS, &[("gate", g.gate), ("state", g.state)], s);
        }
    }
}

/// A request answered by `drainwait serve`; `path` must be one of the served paths or `other`.
pub fn http_request(path: &'static str, code: u16) {
    add(
        HTTP_REQUESTS,
        &[("path", path), ("code", &code.to_string())],
        1.0,
    );
}

/// `\`, `"` and newlines escaped, as the text format wants label values.
fn escape(v: &str) -> String {
    v.replace('\\', r"\\")
        .replace('"', "\\\"")
        .replace('\n', r"\n")
}

fn label_text(labels: &Labels, extra: Option<(&str, &str)>) -> String {
    let mut parts: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    if let Some((k, v)) = extra {
        parts.push(format!("{k}=\"{v}\""));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("{{{}}}", parts.join(","))
    }
}

/// Every family in the Prometheus text exposition format (version 0.0.4).
pub fn render() -> String {
    set(BUILD_INFO, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    let mut reg = registry();
    // A gauge reads 0 before the first drain rather than being absent.
    reg.entry((DRAIN_RUNNING, Vec::new()))
        .or_insert(Value::Number(0.0));
    let mut out = String::new();
    for (i, f) in FAMILIES.iter().enumerate() {
        let kind = match f.kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram(_) => "histogram",
        };
        let _ = writeln!(out, "# HELP {} {}", f.name, f.help);
        let _ = writeln!(out, "# TYPE {} {kind}", f.name);
        for ((_, labels), value) in reg.range((i, Vec::new())..(i + 1, Vec::new())) {
            match (value, f.kind) {
                (Value::Number(n), _) => {
                    let _ = writeln!(out, "{}{} {n}", f.name, label_text(labels, None));
                }
                (
                    Value::Histogram {
                        buckets,
                        sum,
                        count,
                    },
                    Kind::Histogram(bounds),
                ) => {
                    let mut cumulative = 0;
                    for (b, n) in bounds.iter().zip(buckets) {
                        cumulative += n;
                        let le = b.to_string();
                        let _ = writeln!(
                            out,
                            "{}_bucket{} {cumulative}",
                            f.name,
                            label_text(labels, Some(("le", &le)))
                        );
                    }
                    let _ = writeln!(
                        out,
                        "{}_bucket{} {count}",
                        f.name,
                        label_text(labels, Some(("le", "+Inf")))
                    );
                    let _ = writeln!(out, "{}_sum{} {sum}", f.name, label_text(labels, None));
                    let _ = writeln!(out, "{}_count{} {count}", f.name, label_text(labels, None));
                }
                (Value::Histogram { .. }, _) => {}
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..Default::default()
        }))
    }

    #[test]
    fn kube_attempts_count_requests_and_errors_by_kind() {
        kube_attempt::<()>("unit-test-pods", &Ok(Ok(())));
        kube_attempt::<()>("unit-test-pods", &Ok(Err(api(403))));
        kube_attempt::<()>("unit-test-pods", &Ok(Err(api(503))));
        let text = render();
        assert!(
            text.contains("drainwait_kubernetes_requests_total{resource=\"unit-test-pods\"} 3"),
            "{text}"
        );
        assert!(text.contains("drainwait_kubernetes_errors_total{resource=\"unit-test-pods\",kind=\"forbidden\"} 1"), "{text}");
        assert!(text.contains("drainwait_kubernetes_errors_total{resource=\"unit-test-pods\",kind=\"server_error\"} 1"), "{text}");
        assert!(text.contains("# TYPE drainwait_drain_duration_seconds histogram"));
        assert!(text.contains(&format!(
            "drainwait_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        )));
    }

    #[test]
    fn histograms_are_cumulative_with_inf_sum_and_count() {
        observe(
            GATE_SECONDS,
            &[("gate", "unit-test"), ("state", "passed")],
            1.5,
        );
        observe(
            GATE_SECONDS,
            &[("gate", "unit-test"), ("state", "passed")],
            700.0,
        );
        let text = render();
        let line = |le: &str| {
            format!(
                "drainwait_gate_duration_seconds_bucket{{gate=\"unit-test\",state=\"passed\",le=\"{le}\"}}"
            )
        };
        assert!(text.contains(&format!("{} 0", line("1"))), "{text}");
        assert!(text.contains(&format!("{} 1", line("2"))), "{text}");
        assert!(text.contains(&format!("{} 1", line("600"))), "{text}");
        assert!(text.contains(&format!("{} 2", line("+Inf"))), "{text}");
        assert!(
            text.contains(
                "drainwait_gate_duration_seconds_sum{gate=\"unit-test\",state=\"passed\"} 701.5"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "drainwait_gate_duration_seconds_count{gate=\"unit-test\",state=\"passed\"} 2"
            ),
            "{text}"
        );
    }

    #[test]
    fn outside_label_values_are_sanitised_and_capped() {
        assert_eq!(sanitize("Bad\"Code\n{x}"), "BadCodex");
        assert_eq!(sanitize("\"\""), "unknown");
        assert_eq!(escape("a\\b\"c\nd"), r#"a\\b\"c\nd"#);
        for i in 0..(MAX_SERIES + 10) {
            add(
                HTTP_REQUESTS,
                &[("path", "unit-test"), ("code", &i.to_string())],
                1.0,
            );
        }
        let reg = registry();
        let n = reg
            .range((HTTP_REQUESTS, Vec::new())..(HTTP_REQUESTS + 1, Vec::new()))
            .count();
        assert!(n <= MAX_SERIES + 1, "{n} series");
        let other = reg.get(&(
            HTTP_REQUESTS,
            vec![("path", "other".to_string()), ("code", "other".to_string())],
        ));
        assert!(matches!(other, Some(Value::Number(n)) if *n >= 10.0));
    }
}
