//! The endpoints gate: has this pod left every Service's ready endpoints?
//!
//! State machine, one loop:
//!
//! ```text
//!   (re)start watch ──list──▶ syncing ──InitDone──▶ synced ──event──▶ evaluate
//!        ▲                     │  no answer within the request timeout  │
//!        └──── 410 / stream end / stalled list ◀───────────────────────┘
//!   evaluate: out of rotation → settle timer armed (from first seen out);
//!             back in → disarmed.   timer fires → Passed.
//!             403 / 404 → Err (the caller falls back).
//! ```
//!
//! kube's `watcher` does LIST+WATCH, bookmarks and relists on in-stream 410s;
//! we add a fast back-off ([`FastBackoff`]), a guard against a list that
//! never answers, a restart on a 410 *response* (which the watcher would
//! otherwise retry forever), and turn 403/404 into a failed gate. Every
//! synced view is published on a `watch` channel for the aws gate.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_slices};
use kube::{Api, ResourceExt};
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until, timeout};

use crate::decision::{EndpointsView, Me, MyEndpoint, SERVICE_NAME_LABEL, Settle, my_endpoints};
use crate::k8s::{self, FastBackoff, RULE_SLICES};
use crate::report::Progress;

/// This pod's endpoints as of the latest synced watch view.
pub type SharedEndpoints = watch::Receiver<Option<Arc<Vec<MyEndpoint>>>>;

/// The label selector for `DRAINWAIT_SERVICES` (none: every slice in the namespace).
pub fn selector(services: &[String]) -> Option<String> {
    (!services.is_empty()).then(|| format!("{SERVICE_NAME_LABEL} in ({})", services.join(",")))
}

/// What the endpoints gate watches and how long it settles.
pub struct Gate<'a> {
    /// API client.
    pub client: kube::Client,
    /// The pod's namespace.
    pub namespace: &'a str,
    /// The pod.
    pub me: &'a Me,
    /// `DRAINWAIT_SERVICES` (empty: all).
    pub services: &'a [String],
    /// `DRAINWAIT_ENDPOINTS_SETTLE`.
    pub settle: Duration,
    /// `DRAINWAIT_REQUEST_TIMEOUT`: bounds the wait for a list answer.
    pub request_timeout: Duration,
}

/// Run the gate until it passes, or fails with a reason (then the caller falls back).
/// Every synced view of this pod's endpoints is sent on `publish`.
pub async fn run(
    gate: Gate<'_>,
    progress: &Progress,
    publish: watch::Sender<Option<Arc<Vec<MyEndpoint>>>>,
) -> Result<(), String> {
    let Gate {
        client,
        namespace,
        me,
        services,
        settle,
        request_timeout,
    } = gate;
    let api: Api<EndpointSlice> = Api::namespaced(client, namespace);
    let mut config = watcher::Config::default().timeout(k8s::WATCH_TIMEOUT_SECS);
    if let Some(sel) = selector(services) {
        config = config.labels(&sel);
    }
    let mut slices: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut timer = Settle::default();
    progress.see("listing EndpointSlices");

    loop {
        let mut stream = watch_slices(api.clone(), config.clone())
            .backoff(FastBackoff::default())
            .boxed();
        let mut buffer: Option<BTreeMap<String, EndpointSlice>> = None;
        let mut synced = false;
        loop {
            // Until the list answers, bound the wait; afterwards a quiet watch is normal
            // and the client's read timeout covers a dead connection.
            let guard = if synced {
                Duration::from_secs(3600)
            } else {
                request_timeout
            };
            let pass_at = timer.passes_at(settle);
            let item = tokio::select! {
                item = timeout(guard, stream.next()) => item,
                () = sleep_until(pass_at.unwrap_or_else(Instant::now)), if pass_at.is_some() => {
                    progress.see(format!("out of rotation, settled {}", humantime::format_duration(settle)));
                    return Ok(());
                }
            };
            let event = match item {
                Err(_) => {
                    tracing::warn!(
                        "EndpointSlice list got no answer within {}; restarting the watch",
                        humantime::format_duration(request_timeout)
                    );
                    crate::metrics::watch_restart("stalled_list");
                    break;
                }
                Ok(None) => {
                    crate::metrics::watch_restart("stream_end");
                    break;
                }
                Ok(Some(Err(e))) => match classify(&e) {
                    Some(Failure::Fatal(msg)) => return Err(msg),
                    Some(Failure::Relist) => {
                        tracing::debug!("watch answered 410 Gone; relisting");
                        crate::metrics::watch_restart("gone");
                        break;
                    }
                    None => {
                        tracing::debug!(error = %e, "EndpointSlice watch error; retrying");
                        continue;
                    }
                },
                Ok(Some(Ok(event))) => event,
            };
            match event {
                Event::Init => buffer = Some(BTreeMap::new()),
                Event::InitApply(s) => {
                    buffer
                        .get_or_insert_with(BTreeMap::new)
                        .insert(s.name_any(), s);
                }
                Event::InitDone => {
                    slices = buffer.take().unwrap_or_default();
                    synced = true;
                }
                Event::Apply(s) => {
                    slices.insert(s.name_any(), s);
                }
                Event::Delete(s) => {
                    slices.remove(&s.name_any());
                }
            }
            // Evaluate only a complete view: never in the middle of a (re)list.
            if !synced || buffer.is_some() {
                continue;
            }
            let mine = my_endpoints(slices.values(), me);
            let view = EndpointsView::of(&mine);
            let now = Instant::now();
            timer.observe(!view.in_rotation(), now);
            progress.see(describe(&view));
            publish.send_replace(Some(Arc::new(mine)));
        }
    }
}

fn describe(view: &EndpointsView) -> String {
    if view.services.is_empty() {
        "not listed by any EndpointSlice".into()
    } else if view.in_rotation() {
        format!("in rotation via {}", join(&view.in_rotation_via))
    } else {
        format!("out of rotation in {}", join(&view.services))
    }
}

fn join(set: &std::collections::BTreeSet<String>) -> String {
    set.iter().cloned().collect::<Vec<_>>().join(",")
}

enum Failure {
    Fatal(String),
    Relist,
}

fn classify(e: &watcher::Error) -> Option<Failure> {
    crate::metrics::watch_error(e);
    let inner = match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => e,
        _ => return None,
    };
    if k8s::is_forbidden(inner) {
        return Some(Failure::Fatal(format!(
            "forbidden: {}; add the RBAC rule {RULE_SLICES} to a Role bound to the pod's service account",
            k8s::message(inner)
        )));
    }
    if k8s::is_not_found(inner) {
        return Some(Failure::Fatal(format!(
            "the API has no discovery.k8s.io/v1 EndpointSlices ({}); Kubernetes 1.21 or newer is needed",
            k8s::message(inner)
        )));
    }
    if k8s::is_gone(inner) {
        return Some(Failure::Relist);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selector_for_services() {
        assert_eq!(selector(&[]), None);
        assert_eq!(
            selector(&["a".into(), "b".into()]).as_deref(),
            Some("kubernetes.io/service-name in (a,b)")
        );
    }
}
