//! A fake Kubernetes API server, in process, over real HTTP on loopback.
//!
//! Tests, the demo and the benchmark point drainwait (or any kube-rs client)
//! at [`FakeKube::url`] or at the kubeconfig from [`FakeKube::write_kubeconfig`].
//! It serves the few resources drainwait touches, with Kubernetes semantics
//! where a client can tell the difference:
//!
//! * pods, services, EndpointSlices, TargetGroupBindings and events.k8s.io
//!   Events: GET one, LIST (label and field selectors), WATCH, POST, PATCH;
//! * SelfSubjectAccessReview (answers from the [`FakeKube::deny`] list);
//! * `/version`; anything else is a 404 `Status`.
//!
//! Data flow: the test side mutates the world through `put_*` / `update_*` /
//! `delete_*`; every write bumps one global resourceVersion counter, stamps
//! the object, appends a change to its collection's history and wakes the
//! watchers through a `tokio::sync::watch` channel. A watch request replays
//! the history after its `resourceVersion`, then follows live changes, sends
//! BOOKMARKs and ends after `timeoutSeconds`, exactly the stream shape
//! kube-rs' watcher expects. Every request is recorded first
//! ([`FakeKube::requests`]), then checked against the injected faults
//! ([`FakeKube::inject`]), then against the RBAC deny list, then routed.
//! The state sits behind a std `Mutex` that is never held across an await.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Map, Value, json};

use super::http::{self, Body, Server};

/// Watch length when the client gives no `timeoutSeconds` (kube-rs sends 290).
const DEFAULT_WATCH_TIMEOUT: u64 = 290;
/// Longest watch we keep open, whatever the client asks.
const MAX_WATCH_TIMEOUT: u64 = 1800;
/// Changes kept per collection; a watch from an older resourceVersion gets 410.
const HISTORY_LIMIT: usize = 10_000;
/// The user named in Forbidden messages.
const SIM_USER: &str = "system:serviceaccount:default:drainwait";
const NOT_FOUND_MSG: &str = "the server could not find the requested resource";

/// One resource type the fake serves.
struct ResDef {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
}

impl ResDef {
    fn api_version(&self) -> String {
        match self.group {
            "" => self.version.to_string(),
            g => format!("{g}/{}", self.version),
        }
    }
}

const PODS: usize = 0;
const SERVICES: usize = 1;
const SLICES: usize = 2;
const TGBS: usize = 3;
const EVENTS: usize = 4;
#[rustfmt::skip]
const RESOURCES: [ResDef; 5] = [
    ResDef { group: "", version: "v1", plural: "pods", kind: "Pod" },
    ResDef { group: "", version: "v1", plural: "services", kind: "Service" },
    ResDef { group: "discovery.k8s.io", version: "v1", plural: "endpointslices", kind: "EndpointSlice" },
    ResDef { group: "elbv2.k8s.aws", version: "v1beta1", plural: "targetgroupbindings", kind: "TargetGroupBinding" },
    ResDef { group: "events.k8s.io", version: "v1", plural: "events", kind: "Event" },
];

/// One request as the fake received it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// HTTP method, upper case.
    pub method: String,
    /// URL path, without the query.
    pub path: String,
    /// Raw query string (still percent-encoded), empty when none.
    pub query: String,
    /// When it arrived.
    pub at: Instant,
}

/// A queued fault: the next `times` requests that match get `kind` instead of
/// a normal answer. Faults are checked in the order they were injected.
#[derive(Clone, Debug)]
pub struct Fault {
    /// Only requests with this HTTP method (case-insensitive); `None` = any.
    pub method: Option<String>,
    /// Only requests whose path contains this (empty = every path).
    pub path_contains: String,
    /// `Some(true)`: only watch requests; `Some(false)`: only non-watch; `None`: both.
    pub watch: Option<bool>,
    /// What to do instead of answering normally.
    pub kind: FaultKind,
    /// How many matching requests it applies to (0 = none: it is dropped).
    pub times: usize,
}

impl Fault {
    /// A fault for the next request (any method, watch or not) whose path contains `path_contains`.
    pub fn new(path_contains: &str, kind: FaultKind) -> Fault {
        Fault {
            method: None,
            path_contains: path_contains.to_string(),
            watch: None,
            kind,
            times: 1,
        }
    }
    /// Restrict to one HTTP method.
    pub fn method(mut self, method: &str) -> Fault {
        self.method = Some(method.to_string());
        self
    }
    /// Restrict to watch (`true`) or non-watch (`false`) requests.
    pub fn watch(mut self, watch: bool) -> Fault {
        self.watch = Some(watch);
        self
    }
    /// Apply to this many matching requests.
    pub fn times(mut self, times: usize) -> Fault {
        self.times = times;
        self
    }

    fn matches(&self, method: &str, path: &str, watch: bool) -> bool {
        self.times > 0
            && self
                .method
                .as_deref()
                .is_none_or(|m| m.eq_ignore_ascii_case(method))
            && path.contains(&self.path_contains)
            && self.watch.is_none_or(|w| w == watch)
    }
}

/// What an injected fault does. `DropWatch` and `GoneInStream` are meant for
/// watch requests (`Fault::watch(true)`); on a plain GET they give a body
/// that is not the expected JSON, which a client reports as a decode error.
#[derive(Clone, Debug)]
pub enum FaultKind {
    /// Answer with a `Status` object and this HTTP code (429 also gets `Retry-After: 1`).
    Status(u16),
    /// Never answer; the connection stays open (other connections are unaffected).
    Hang,
    /// Answer 200 and end the body at once, as if the watch stream was cut.
    DropWatch,
    /// Answer 200 with one `ERROR` event carrying a 410 Expired Status, then end
    /// the stream: how real servers say "resourceVersion too old".
    GoneInStream,
}

/// One write to a collection, kept for watch replay.
struct Change {
    rv: u64,
    kind: &'static str,
    object: Value,
    /// The state before a MODIFIED, so a selector watch can turn it into ADDED/DELETED.
    old: Option<Value>,
}

#[derive(Default)]
struct Collection {
    /// Objects in creation order.
    objects: Vec<Value>,
    history: VecDeque<Change>,
    /// resourceVersion of the newest change dropped from `history`.
    compacted_through: u64,
}

impl Collection {
    fn position(&self, ns: &str, name: &str) -> Option<usize> {
        self.objects
            .iter()
            .position(|o| meta_str(o, "namespace") == Some(ns) && meta_str(o, "name") == Some(name))
    }
    fn get(&self, ns: &str, name: &str) -> Option<&Value> {
        self.position(ns, name).map(|i| &self.objects[i])
    }
    fn record(&mut self, change: Change) {
        self.history.push_back(change);
        while self.history.len() > HISTORY_LIMIT {
            if let Some(dropped) = self.history.pop_front() {
                self.compacted_through = dropped.rv;
            }
        }
    }
}

struct State {
    rv: u64,
    colls: [Collection; 5],
    tgb_crd: bool,
    /// (verb, group, resource) rules that get 403; "*" matches anything.
    denied: Vec<(String, String, String)>,
    faults: VecDeque<Fault>,
    requests: Vec<RequestRecord>,
    bookmark_every: Duration,
    rng: StdRng,
    /// Carries the newest resourceVersion; watch streams wait on it.
    changed: tokio::sync::watch::Sender<u64>,
}

type Shared = Arc<Mutex<State>>;

fn lock(shared: &Shared) -> MutexGuard<'_, State> {
    // A panicking test thread must not take the whole fake down with it.
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

impl State {
    fn new_uid(&mut self) -> String {
        let b: u128 = self.rng.random();
        // Version 4, RFC 4122 variant: looks like what the apiserver generates.
        let b = (b & !(0xF << 76)) | (0x4 << 76);
        let b = (b & !(0x3 << 62)) | (0x2 << 62);
        let h = format!("{b:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &h[0..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..32]
        )
    }

    fn random_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        (0..5)
            .map(|_| ALPHABET[self.rng.random_range(0..ALPHABET.len())] as char)
            .collect()
    }

    fn is_denied(&self, verb: &str, group: &str, resource: &str) -> bool {
        let m = |rule: &str, v: &str| rule == "*" || rule == v;
        self.denied
            .iter()
            .any(|(v, g, r)| m(v, verb) && m(g, group) && m(r, resource))
    }

    /// Upsert: stamps apiVersion, kind, uid, creationTimestamp and a new
    /// resourceVersion, records ADDED or MODIFIED and wakes the watchers.
    /// `obj.metadata.{namespace,name}` must be set (see [`identify`]).
    fn store(&mut self, res: usize, mut obj: Map<String, Value>) -> Value {
        self.rv += 1;
        let rv = self.rv;
        let def = &RESOURCES[res];
        obj.insert("apiVersion".into(), def.api_version().into());
        obj.insert("kind".into(), def.kind.into());
        let ns = meta_of(&obj, "namespace");
        let name = meta_of(&obj, "name");
        let pos = self.colls[res].position(&ns, &name);
        let old = pos.map(|i| self.colls[res].objects[i].clone());
        let new_uid = self.new_uid();
        let meta = meta_mut(&mut obj);
        if !meta.get("uid").is_some_and(Value::is_string) {
            let uid = old
                .as_ref()
                .and_then(|o| o["metadata"]["uid"].as_str().map(String::from));
            meta.insert("uid".into(), uid.unwrap_or(new_uid).into());
        }
        if !meta.contains_key("creationTimestamp") {
            let created = old
                .as_ref()
                .map(|o| o["metadata"]["creationTimestamp"].clone())
                .filter(|v| v.is_string());
            let now = jiff::Timestamp::now()
                .strftime("%Y-%m-%dT%H:%M:%SZ")
                .to_string();
            meta.insert("creationTimestamp".into(), created.unwrap_or(now.into()));
        }
        meta.insert("resourceVersion".into(), rv.to_string().into());
        let value = Value::Object(obj);
        let coll = &mut self.colls[res];
        match pos {
            Some(i) => coll.objects[i] = value.clone(),
            None => coll.objects.push(value.clone()),
        }
        let kind = if old.is_some() { "MODIFIED" } else { "ADDED" };
        coll.record(Change {
            rv,
            kind,
            object: value.clone(),
            old,
        });
        self.changed.send_replace(rv);
        value
    }

    /// Removes an object, recording DELETED (with the deletion's resourceVersion, as real servers do).
    fn remove(&mut self, res: usize, ns: &str, name: &str) -> Option<Value> {
        let i = self.colls[res].position(ns, name)?;
        self.rv += 1;
        let rv = self.rv;
        let mut object = self.colls[res].objects.remove(i);
        if let Some(meta) = object.get_mut("metadata").and_then(Value::as_object_mut) {
            meta.insert("resourceVersion".into(), rv.to_string().into());
        }
        self.colls[res].record(Change {
            rv,
            kind: "DELETED",
            object: object.clone(),
            old: None,
        });
        self.changed.send_replace(rv);
        Some(object)
    }

    /// Fills in metadata.namespace (when absent) and metadata.name (from
    /// generateName, or a made-up one) so that `store` can key the object.
    fn identify(&mut self, res: usize, obj: &mut Map<String, Value>, default_ns: &str) {
        let suffix = self.random_suffix();
        let meta = meta_mut(obj);
        let unset = |m: &Map<String, Value>, k: &str| {
            m.get(k).and_then(Value::as_str).is_none_or(str::is_empty)
        };
        if unset(meta, "namespace") {
            meta.insert("namespace".into(), default_ns.into());
        }
        if unset(meta, "name") {
            let prefix = meta
                .get("generateName")
                .and_then(Value::as_str)
                .map(String::from);
            let prefix =
                prefix.unwrap_or_else(|| format!("{}-", RESOURCES[res].kind.to_lowercase()));
            meta.insert("name".into(), format!("{prefix}{suffix}").into());
        }
    }

    fn put_typed(&mut self, res: usize, obj: impl serde::Serialize) {
        if let Ok(Value::Object(mut map)) = serde_json::to_value(obj) {
            self.identify(res, &mut map, "default");
            self.store(res, map);
        }
    }

    /// Takes the first queued fault matching this request, consuming one use.
    fn take_fault(&mut self, method: &str, path: &str, watch: bool) -> Option<FaultKind> {
        let i = self
            .faults
            .iter()
            .position(|f| f.matches(method, path, watch))?;
        let fault = &mut self.faults[i];
        let kind = fault.kind.clone();
        fault.times -= 1;
        if fault.times == 0 {
            self.faults.remove(i);
        }
        Some(kind)
    }
}

fn meta_str<'a>(obj: &'a Value, key: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(key)?.as_str()
}

fn meta_of(obj: &Map<String, Value>, key: &str) -> String {
    obj.get("metadata")
        .and_then(|m| m.get(key))
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

/// `obj.metadata` as a map, replacing anything that is not an object.
fn meta_mut(obj: &mut Map<String, Value>) -> &mut Map<String, Value> {
    let meta = obj.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    match meta {
        Value::Object(m) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

/// The fake API server. Dropping it stops the server and ends its watches.
pub struct FakeKube {
    server: Server,
    shared: Shared,
}

impl FakeKube {
    /// Start on `127.0.0.1` with a free port.
    pub async fn start() -> std::io::Result<FakeKube> {
        FakeKube::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Start on a given address.
    pub async fn start_on(bind: SocketAddr) -> std::io::Result<FakeKube> {
        let state = State {
            rv: 1,
            colls: Default::default(),
            tgb_crd: true,
            denied: Vec::new(),
            faults: VecDeque::new(),
            requests: Vec::new(),
            bookmark_every: Duration::from_secs(1),
            rng: StdRng::from_os_rng(),
            changed: tokio::sync::watch::Sender::new(1),
        };
        let shared: Shared = Arc::new(Mutex::new(state));
        let handler_state = shared.clone();
        let handler: http::Handler =
            Arc::new(move |req| Box::pin(handle(handler_state.clone(), req)));
        let server = Server::start(bind, handler).await?;
        Ok(FakeKube { server, shared })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A kubeconfig whose current context points at this server, as user
    /// `sim` with bearer token `sim-token`, in `namespace`.
    pub fn kubeconfig_yaml(&self, namespace: &str) -> String {
        // JSON strings are valid YAML scalars: safe quoting for any namespace.
        let ns = Value::from(namespace);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: sim\n  cluster:\n    server: {url}\n\
             users:\n- name: sim\n  user:\n    token: sim-token\n\
             contexts:\n- name: sim\n  context:\n    cluster: sim\n    user: sim\n    namespace: {ns}\n\
             current-context: sim\n",
            url = self.url()
        )
    }

    /// Write [`FakeKube::kubeconfig_yaml`] to `path`.
    pub fn write_kubeconfig(&self, path: &Path, namespace: &str) -> std::io::Result<()> {
        std::fs::write(path, self.kubeconfig_yaml(namespace))
    }

    /// Create or replace a pod (namespace `default` when unset). uid is kept
    /// from the stored pod or generated; the resourceVersion is always new.
    pub fn put_pod(&self, pod: Pod) {
        lock(&self.shared).put_typed(PODS, pod);
    }

    /// Remove a pod: GET answers 404 afterwards.
    pub fn delete_pod(&self, namespace: &str, name: &str) {
        lock(&self.shared).remove(PODS, namespace, name);
    }

    /// What `kubectl delete` does first: set `deletionTimestamp = now + grace`
    /// (sub-second precision kept, for short tests) and
    /// `deletionGracePeriodSeconds` (rounded up). No-op when the pod is absent.
    pub fn mark_deleting(&self, namespace: &str, name: &str, grace: Duration) {
        let mut st = lock(&self.shared);
        let Some(Value::Object(mut pod)) = st.colls[PODS].get(namespace, name).cloned() else {
            return;
        };
        let at = jiff::Timestamp::now()
            .checked_add(grace)
            .unwrap_or(jiff::Timestamp::MAX);
        let meta = meta_mut(&mut pod);
        meta.insert("deletionTimestamp".into(), at.to_string().into());
        meta.insert(
            "deletionGracePeriodSeconds".into(),
            (grace.as_secs_f64().ceil() as i64).into(),
        );
        st.store(PODS, pod);
    }

    /// The stored pod, if any.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Pod> {
        let v = lock(&self.shared).colls[PODS]
            .get(namespace, name)
            .cloned()?;
        serde_json::from_value(v).ok()
    }

    /// Create or replace a Service.
    pub fn put_service(&self, svc: Service) {
        lock(&self.shared).put_typed(SERVICES, svc);
    }

    /// Create or replace an EndpointSlice; watchers see ADDED or MODIFIED.
    pub fn put_endpoint_slice(&self, slice: EndpointSlice) {
        lock(&self.shared).put_typed(SLICES, slice);
    }

    /// Remove an EndpointSlice; watchers see DELETED.
    pub fn delete_endpoint_slice(&self, namespace: &str, name: &str) {
        lock(&self.shared).remove(SLICES, namespace, name);
    }

    /// The stored EndpointSlice, if any.
    pub fn endpoint_slice(&self, namespace: &str, name: &str) -> Option<EndpointSlice> {
        let v = lock(&self.shared).colls[SLICES]
            .get(namespace, name)
            .cloned()?;
        serde_json::from_value(v).ok()
    }

    /// Read-modify-write an EndpointSlice; watchers see MODIFIED. No-op when absent.
    /// `f` runs without the lock held, so it may call back into the fake.
    pub fn update_endpoint_slice(
        &self,
        namespace: &str,
        name: &str,
        f: impl FnOnce(&mut EndpointSlice),
    ) {
        let Some(mut slice) = self.endpoint_slice(namespace, name) else {
            return;
        };
        f(&mut slice);
        self.put_endpoint_slice(slice);
    }

    /// `false`: every TargetGroupBinding URL answers 404 like a cluster without
    /// the CRD (stored bindings are kept, hidden). Default `true`.
    pub fn set_tgb_crd_installed(&self, installed: bool) {
        lock(&self.shared).tgb_crd = installed;
    }

    /// Create or replace an `elbv2.k8s.aws/v1beta1` TargetGroupBinding with this `spec`.
    pub fn put_target_group_binding(&self, namespace: &str, name: &str, spec: Value) {
        let obj = json!({"metadata": {"name": name, "namespace": namespace}, "spec": spec});
        if let Value::Object(map) = obj {
            lock(&self.shared).store(TGBS, map);
        }
    }

    /// The events.k8s.io/v1 Events stored through the API (POST, then PATCHes
    /// applied in place), in creation order.
    pub fn events(&self) -> Vec<Value> {
        lock(&self.shared).colls[EVENTS].objects.clone()
    }

    /// Every request received so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.shared).requests.clone()
    }

    /// RBAC: requests for `verb` on `resource` in API `group` ("" = core) get
    /// 403, and SelfSubjectAccessReview says `allowed: false`. "*" matches any.
    pub fn deny(&self, verb: &str, group: &str, resource: &str) {
        lock(&self.shared)
            .denied
            .push((verb.into(), group.into(), resource.into()));
    }

    /// Undo every [`FakeKube::deny`] with exactly these arguments.
    pub fn allow(&self, verb: &str, group: &str, resource: &str) {
        lock(&self.shared)
            .denied
            .retain(|(v, g, r)| (v.as_str(), g.as_str(), r.as_str()) != (verb, group, resource));
    }

    /// Queue a fault; it applies to the next matching requests.
    pub fn inject(&self, fault: Fault) {
        if fault.times > 0 {
            lock(&self.shared).faults.push_back(fault);
        }
    }

    /// BOOKMARK period of watches started from now on (default 1 s).
    pub fn set_bookmark_interval(&self, every: Duration) {
        lock(&self.shared).bookmark_every = every.max(Duration::from_millis(10));
    }

    /// The current global resourceVersion.
    pub fn resource_version(&self) -> u64 {
        lock(&self.shared).rv
    }
}

// ---------------------------------------------------------------- requests

/// A parsed API path: `/api/v1/...` (group "") or `/apis/GROUP/VERSION/...`.
struct Route {
    group: String,
    version: String,
    ns: Option<String>,
    plural: String,
    name: Option<String>,
}

impl Route {
    fn parse(path: &str) -> Option<Route> {
        let segs: Vec<&str> = path.strip_prefix('/')?.split('/').collect();
        if segs.iter().any(|s| s.is_empty()) {
            return None;
        }
        let (group, version, rest) = match segs.as_slice() {
            ["api", v, rest @ ..] => ("", *v, rest),
            ["apis", g, v, rest @ ..] => (*g, *v, rest),
            _ => return None,
        };
        let (ns, plural, name) = match rest {
            ["namespaces", ns, plural] => (Some(*ns), *plural, None),
            ["namespaces", ns, plural, name] => (Some(*ns), *plural, Some(*name)),
            [plural] => (None, *plural, None),
            [plural, name] => (None, *plural, Some(*name)),
            _ => return None, // subresources and deeper paths: not served
        };
        Some(Route {
            group: group.into(),
            version: version.into(),
            ns: ns.map(String::from),
            plural: plural.into(),
            name: name.map(String::from),
        })
    }

    /// `pods`, or `endpointslices.discovery.k8s.io`: how the apiserver names resources in messages.
    fn qualified(&self) -> String {
        match self.group.as_str() {
            "" => self.plural.clone(),
            g => format!("{}.{g}", self.plural),
        }
    }
}

/// Decoded query parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(raw: &str) -> Query {
        let pairs = raw.split('&').filter(|p| !p.is_empty());
        Query(
            pairs
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .map(|(k, v)| (decode(k), decode(v)))
                .collect(),
        )
    }
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
    fn is_watch(&self) -> bool {
        matches!(self.get("watch"), Some("true" | "1" | "True"))
    }
}

/// application/x-www-form-urlencoded decoding; invalid escapes are kept literally.
fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let hex = |i: usize| b.get(i).and_then(|c| (*c as char).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 2;
            }
            (b'+', _, _) => out.push(b' '),
            (c, _, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn verb_of(method: &Method, named: bool, watch: bool) -> &'static str {
    match *method {
        Method::GET | Method::HEAD if watch => "watch",
        Method::GET | Method::HEAD if named => "get",
        Method::GET | Method::HEAD => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE if named => "delete",
        Method::DELETE => "deletecollection",
        _ => "unknown",
    }
}

fn reason_for(code: u16) -> &'static str {
    match code {
        400 => "BadRequest",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        405 => "MethodNotAllowed",
        409 => "Conflict",
        410 => "Expired",
        415 => "UnsupportedMediaType",
        422 => "Invalid",
        429 => "TooManyRequests",
        500 => "InternalError",
        503 => "ServiceUnavailable",
        504 => "Timeout",
        _ => "",
    }
}

fn status_value(code: u16, reason: &str, message: &str, details: Option<Value>) -> Value {
    let mut v = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": message, "reason": reason, "code": code});
    if let (Some(d), Some(map)) = (details, v.as_object_mut()) {
        map.insert("details".into(), d);
    }
    v
}

fn status(code: u16, reason: &str, message: &str, details: Option<Value>) -> Response<Body> {
    let sc = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut resp = http::json(sc, &status_value(sc.as_u16(), reason, message, details));
    if sc == StatusCode::TOO_MANY_REQUESTS {
        resp.headers_mut().insert(
            hyper::header::RETRY_AFTER,
            hyper::header::HeaderValue::from_static("1"),
        );
    }
    resp
}

fn bad_request(message: &str) -> Response<Body> {
    status(400, "BadRequest", message, None)
}

fn not_found_resource() -> Response<Body> {
    status(404, "NotFound", NOT_FOUND_MSG, Some(json!({})))
}

fn not_found_object(route: &Route, name: &str) -> Response<Body> {
    let msg = format!("{} \"{name}\" not found", route.qualified());
    status(
        404,
        "NotFound",
        &msg,
        Some(json!({"name": name, "group": route.group, "kind": route.plural})),
    )
}

fn forbidden(route: &Route, verb: &str) -> Response<Body> {
    let subject = match &route.name {
        Some(n) => format!("{} \"{n}\"", route.qualified()),
        None => route.qualified(),
    };
    let scope = match &route.ns {
        Some(ns) => format!("in the namespace \"{ns}\""),
        None => "at the cluster scope".to_string(),
    };
    let msg = format!(
        "{subject} is forbidden: User \"{SIM_USER}\" cannot {verb} resource \"{}\" in API group \"{}\" {scope}",
        route.plural, route.group
    );
    let details = json!({"name": route.name.clone().unwrap_or_default(), "group": route.group, "kind": route.plural});
    status(403, "Forbidden", &msg, Some(details))
}

fn watch_line(kind: &str, object: &Value) -> Bytes {
    Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))
}

fn gone_line() -> Bytes {
    let st = status_value(410, "Expired", "too old resource version", None);
    watch_line("ERROR", &st)
}

async fn handle(shared: Shared, req: Request<Bytes>) -> Response<Body> {
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let raw_query = req.uri().query().unwrap_or("").to_string();
    let query = Query::parse(&raw_query);
    let watch = query.is_watch();
    let fault = {
        let mut st = lock(&shared);
        st.requests.push(RequestRecord {
            method: method.to_string(),
            path: path.clone(),
            query: raw_query,
            at: Instant::now(),
        });
        st.take_fault(method.as_str(), &path, watch)
    };
    match fault {
        Some(FaultKind::Status(code)) => {
            return status(
                code,
                reason_for(code),
                &format!("sim: injected fault (HTTP {code})"),
                None,
            );
        }
        // Only this connection's task waits; the server keeps serving others.
        Some(FaultKind::Hang) => return std::future::pending().await,
        Some(FaultKind::DropWatch) => return http::streaming("application/json").1,
        Some(FaultKind::GoneInStream) => {
            let (tx, resp) = http::streaming("application/json");
            // The channel is empty, so this cannot fail for lack of room.
            let _ = tx.try_send(gone_line());
            return resp;
        }
        None => {}
    }
    if method == Method::GET && path == "/version" {
        let v = json!({"major": "1", "minor": "33", "gitVersion": "v1.33.0-sim", "platform": "linux/amd64"});
        return http::json(StatusCode::OK, &v);
    }
    let Some(route) = Route::parse(&path) else {
        return not_found_resource();
    };
    let verb = verb_of(&method, route.name.is_some(), watch);
    if lock(&shared).is_denied(verb, &route.group, &route.plural) {
        return forbidden(&route, verb);
    }
    if (route.group.as_str(), route.plural.as_str(), verb)
        == ("authorization.k8s.io", "selfsubjectaccessreviews", "create")
    {
        return access_review(&shared, req.body());
    }
    let Some(res) = RESOURCES.iter().position(|d| {
        d.group == route.group && d.version == route.version && d.plural == route.plural
    }) else {
        return not_found_resource();
    };
    if res == TGBS && !lock(&shared).tgb_crd {
        return not_found_resource();
    }
    match (verb, &route.ns, &route.name) {
        ("get", Some(ns), Some(name)) => match lock(&shared).colls[res].get(ns, name) {
            Some(obj) => http::json(StatusCode::OK, obj),
            None => not_found_object(&route, name),
        },
        ("list" | "watch", _, _) => {
            let filter = match Filter::new(&route, &query) {
                Ok(f) => f,
                Err(msg) => return bad_request(&msg),
            };
            if verb == "watch" {
                start_watch(&shared, res, filter, &query)
            } else {
                list(&shared, res, &filter)
            }
        }
        // Namespaced kinds only: a name without a namespace is no URL of ours.
        ("get", None, _) => not_found_resource(),
        ("create", Some(ns), None) => create(&shared, res, &route, ns, req.body()),
        ("patch", Some(ns), Some(name)) => patch(&shared, res, &route, ns, name, &req),
        _ => status(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
            None,
        ),
    }
}

fn list(shared: &Shared, res: usize, filter: &Filter) -> Response<Body> {
    let st = lock(shared);
    let items: Vec<&Value> = st.colls[res]
        .objects
        .iter()
        .filter(|o| filter.matches(o))
        .collect();
    let def = &RESOURCES[res];
    let body = json!({"apiVersion": def.api_version(), "kind": format!("{}List", def.kind),
        "metadata": {"resourceVersion": st.rv.to_string()}, "items": items});
    http::json(StatusCode::OK, &body)
}

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) if map.get("metadata").is_none_or(Value::is_object) => Ok(map),
        Ok(_) => Err("the body must be a JSON object with an object `metadata`".into()),
        Err(e) => Err(format!("invalid JSON body: {e}")),
    }
}

fn create(shared: &Shared, res: usize, route: &Route, ns: &str, body: &[u8]) -> Response<Body> {
    let mut obj = match parse_object(body) {
        Ok(o) => o,
        Err(msg) => return bad_request(&msg),
    };
    let body_ns = meta_of(&obj, "namespace");
    if !body_ns.is_empty() && body_ns != ns {
        return bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        );
    }
    let mut st = lock(shared);
    st.identify(res, &mut obj, ns);
    let name = meta_of(&obj, "name");
    if st.colls[res].get(ns, &name).is_some() {
        let msg = format!("{} \"{name}\" already exists", route.qualified());
        return status(
            409,
            "AlreadyExists",
            &msg,
            Some(json!({"name": name, "kind": route.plural})),
        );
    }
    let stored = st.store(res, obj);
    http::json(StatusCode::CREATED, &stored)
}

/// Merge patch, shallow: top-level keys (and `metadata`'s keys) are replaced,
/// `null` removes. Enough for the Event updates kube-rs' Recorder sends.
fn patch(
    shared: &Shared,
    res: usize,
    route: &Route,
    ns: &str,
    name: &str,
    req: &Request<Bytes>,
) -> Response<Body> {
    let ctype = req
        .headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let media = ctype.split(';').next().unwrap_or("").trim();
    let supported = [
        "application/merge-patch+json",
        "application/strategic-merge-patch+json",
        "application/json",
    ];
    if !supported.contains(&media) {
        let msg = format!(
            "the body of the request was in an unknown format - accepted media types include: {}",
            supported.join(", ")
        );
        return status(415, "UnsupportedMediaType", &msg, None);
    }
    let patch = match parse_object(req.body()) {
        Ok(p) => p,
        Err(msg) => return bad_request(&msg),
    };
    let mut st = lock(shared);
    let Some(Value::Object(mut obj)) = st.colls[res].get(ns, name).cloned() else {
        return not_found_object(route, name);
    };
    for (key, value) in patch {
        match (key.as_str(), value) {
            ("metadata", Value::Object(m)) => {
                let meta = meta_mut(&mut obj);
                for (k, v) in m {
                    if v.is_null() {
                        meta.remove(&k)
                    } else {
                        meta.insert(k, v)
                    };
                }
            }
            (_, Value::Null) => {
                obj.remove(&key);
            }
            (_, v) => {
                obj.insert(key, v);
            }
        }
    }
    // The object's identity comes from the URL, whatever the patch said.
    let meta = meta_mut(&mut obj);
    meta.insert("namespace".into(), ns.into());
    meta.insert("name".into(), name.into());
    let stored = st.store(res, obj);
    http::json(StatusCode::OK, &stored)
}

fn access_review(shared: &Shared, body: &[u8]) -> Response<Body> {
    let mut review = match parse_object(body) {
        Ok(r) => r,
        Err(msg) => return bad_request(&msg),
    };
    let attrs = review
        .get("spec")
        .and_then(|s| s.get("resourceAttributes"))
        .cloned()
        .unwrap_or(Value::Null);
    let field = |k: &str| {
        attrs
            .get(k)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    // Non-resource requests (nonResourceAttributes) are always allowed here.
    let denied = attrs.is_object()
        && lock(shared).is_denied(&field("verb"), &field("group"), &field("resource"));
    let status = if denied {
        json!({"allowed": false, "reason": format!("sim: {} {} in API group \"{}\" is denied by FakeKube::deny",
            field("verb"), field("resource"), field("group"))})
    } else {
        json!({"allowed": true, "reason": "sim: allowed"})
    };
    review.insert("apiVersion".into(), "authorization.k8s.io/v1".into());
    review.insert("kind".into(), "SelfSubjectAccessReview".into());
    review.insert("status".into(), status);
    http::json(StatusCode::CREATED, &Value::Object(review))
}

// ---------------------------------------------------------------- selectors

/// One label selector requirement.
#[derive(Debug, PartialEq)]
enum Req {
    Eq(String, String),
    NotEq(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    NotExists(String),
}

impl Req {
    fn matches(&self, labels: &Value) -> bool {
        let get = |k: &str| labels.get(k).and_then(Value::as_str);
        match self {
            Req::Eq(k, v) => get(k) == Some(v.as_str()),
            // Like Kubernetes: objects without the label match `!=` and `notin`.
            Req::NotEq(k, v) => get(k) != Some(v.as_str()),
            Req::In(k, vs) => get(k).is_some_and(|l| vs.iter().any(|v| v == l)),
            Req::NotIn(k, vs) => get(k).is_none_or(|l| vs.iter().all(|v| v != l)),
            Req::Exists(k) => get(k).is_some(),
            Req::NotExists(k) => get(k).is_none(),
        }
    }
}

fn valid_label_part(s: &str, allow_empty: bool) -> bool {
    (allow_empty || !s.is_empty())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

/// Parses `k=v`, `k==v`, `k!=v`, `k in (a,b)`, `k notin (a,b)`, `k`, `!k`, comma-separated (AND).
fn parse_label_selector(s: &str) -> Result<Vec<Req>, String> {
    // Split on commas outside parentheses.
    let (mut terms, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                terms.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&s[start..]);
    let err = |t: &str| format!("unable to parse requirement: invalid label selector term {t:?}");
    let mut reqs = Vec::new();
    for term in terms.iter().map(|t| t.trim()) {
        if term.is_empty() {
            if s.trim().is_empty() {
                continue;
            }
            return Err(err(term));
        }
        let req = if let Some(open) = term.find('(') {
            let inner = term
                .strip_suffix(')')
                .and_then(|t| t.get(open + 1..))
                .ok_or_else(|| err(term))?;
            let words: Vec<&str> = term[..open].split_whitespace().collect();
            let values: Vec<String> = inner.split(',').map(|v| v.trim().to_string()).collect();
            if values.iter().any(|v| !valid_label_part(v, true)) || inner.trim().is_empty() {
                return Err(err(term));
            }
            match words.as_slice() {
                [k, "in"] => Req::In(k.to_string(), values),
                [k, "notin"] => Req::NotIn(k.to_string(), values),
                _ => return Err(err(term)),
            }
        } else if let Some((k, v)) = term.split_once("!=") {
            Req::NotEq(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Req::Eq(k.trim().into(), v.trim().into())
        } else if let Some(k) = term.strip_prefix('!') {
            Req::NotExists(k.trim().into())
        } else {
            Req::Exists(term.into())
        };
        let ok = match &req {
            Req::Eq(k, v) | Req::NotEq(k, v) => {
                valid_label_part(k, false) && valid_label_part(v, true)
            }
            Req::In(k, _) | Req::NotIn(k, _) | Req::Exists(k) | Req::NotExists(k) => {
                valid_label_part(k, false)
            }
        };
        if !ok {
            return Err(err(term));
        }
        reqs.push(req);
    }
    Ok(reqs)
}

/// Which objects a list or watch sees.
struct Filter {
    ns: Option<String>,
    name: Option<String>,
    labels: Vec<Req>,
    /// (field, must equal?, value) for metadata.name / metadata.namespace.
    fields: Vec<(String, bool, String)>,
}

impl Filter {
    fn new(route: &Route, query: &Query) -> Result<Filter, String> {
        let labels = parse_label_selector(query.get("labelSelector").unwrap_or(""))?;
        let mut fields = Vec::new();
        for term in query
            .get("fieldSelector")
            .unwrap_or("")
            .split(',')
            .filter(|t| !t.trim().is_empty())
        {
            let (k, eq, v) = if let Some((k, v)) = term.split_once("!=") {
                (k, false, v)
            } else if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
                (k, true, v)
            } else {
                return Err(format!("invalid field selector term {term:?}"));
            };
            let k = k.trim();
            if k != "metadata.name" && k != "metadata.namespace" {
                return Err(format!("field label not supported: {k}"));
            }
            fields.push((k.to_string(), eq, v.trim().to_string()));
        }
        Ok(Filter {
            ns: route.ns.clone(),
            name: route.name.clone(),
            labels,
            fields,
        })
    }

    fn matches(&self, obj: &Value) -> bool {
        let field = |f: &str| meta_str(obj, f.strip_prefix("metadata.").unwrap_or(f));
        self.ns
            .as_deref()
            .is_none_or(|ns| meta_str(obj, "namespace") == Some(ns))
            && self
                .name
                .as_deref()
                .is_none_or(|n| meta_str(obj, "name") == Some(n))
            && self
                .fields
                .iter()
                .all(|(f, eq, v)| (field(f) == Some(v.as_str())) == *eq)
            && self
                .labels
                .iter()
                .all(|r| r.matches(&obj["metadata"]["labels"]))
    }

    /// The event this watch should see for a change: a MODIFIED that moves an
    /// object into or out of the selection becomes ADDED or DELETED.
    fn event_for<'a>(&self, change: &'a Change) -> Option<(&'static str, &'a Value)> {
        let now = self.matches(&change.object);
        let before = change.old.as_ref().is_some_and(|o| self.matches(o));
        match (change.kind, before, now) {
            ("MODIFIED", true, true) => Some(("MODIFIED", &change.object)),
            ("MODIFIED", false, true) => Some(("ADDED", &change.object)),
            ("MODIFIED", true, false) => Some(("DELETED", &change.object)),
            (kind, _, true) => Some((kind, &change.object)),
            _ => None,
        }
    }
}

// ---------------------------------------------------------------- watch

fn start_watch(shared: &Shared, res: usize, filter: Filter, query: &Query) -> Response<Body> {
    let timeout = match query.get("timeoutSeconds").map(str::parse::<u64>) {
        None => DEFAULT_WATCH_TIMEOUT,
        Some(Ok(t)) => t.min(MAX_WATCH_TIMEOUT),
        Some(Err(_)) => return bad_request("timeoutSeconds must be a non-negative integer"),
    };
    let since = match query.get("resourceVersion").unwrap_or("") {
        "" | "0" => None,
        rv => match rv.parse::<u64>() {
            Ok(n) => Some(n),
            Err(_) => return bad_request(&format!("invalid resourceVersion {rv:?}")),
        },
    };
    let bookmarks = query.get("allowWatchBookmarks") == Some("true");
    let st = lock(shared);
    let (start_rv, initial) = match since {
        // "Most recent" / "any": synthetic ADDED for what exists now, then changes.
        None => {
            let objs = st.colls[res].objects.iter().filter(|o| filter.matches(o));
            (st.rv, objs.map(|o| watch_line("ADDED", o)).collect())
        }
        Some(rv) => (rv, Vec::new()),
    };
    // Changes after `since` were dropped from the history: the client must relist.
    let expired = since.is_some_and(|rv| rv < st.colls[res].compacted_through);
    let ctx = WatchCtx {
        shared: shared.clone(),
        res,
        filter,
        sent: start_rv,
        bookmark_every: bookmarks.then_some(st.bookmark_every),
        deadline: tokio::time::Instant::now() + Duration::from_secs(timeout),
        changed: st.changed.subscribe(),
    };
    drop(st);
    let (tx, resp) = http::streaming("application/json");
    tokio::spawn(ctx.run(tx, initial, expired));
    resp
}

struct WatchCtx {
    shared: Shared,
    res: usize,
    filter: Filter,
    /// Every change up to this resourceVersion has been sent (or filtered out).
    sent: u64,
    bookmark_every: Option<Duration>,
    deadline: tokio::time::Instant,
    changed: tokio::sync::watch::Receiver<u64>,
}

impl WatchCtx {
    async fn run(
        mut self,
        tx: tokio::sync::mpsc::Sender<Bytes>,
        initial: Vec<Bytes>,
        expired: bool,
    ) {
        if expired {
            let _ = tx.send(gone_line()).await;
            return;
        }
        for line in initial {
            if tx.send(line).await.is_err() {
                return;
            }
        }
        let every = self.bookmark_every.unwrap_or(Duration::from_secs(3600));
        let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let lines = match self.pending() {
                Some(lines) => lines,
                None => {
                    let _ = tx.send(gone_line()).await;
                    return;
                }
            };
            for line in lines {
                if tx.send(line).await.is_err() {
                    return;
                }
            }
            tokio::select! {
                changed = self.changed.changed() => if changed.is_err() { return },
                _ = ticker.tick(), if self.bookmark_every.is_some() => {
                    let def = &RESOURCES[self.res];
                    let mark = json!({"apiVersion": def.api_version(), "kind": def.kind,
                        "metadata": {"resourceVersion": self.sent.to_string()}});
                    if tx.send(watch_line("BOOKMARK", &mark)).await.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(self.deadline) => return,
                _ = tx.closed() => return,
            }
        }
    }

    /// Lines for the changes after `sent`, advancing it; `None` when they were compacted away.
    fn pending(&mut self) -> Option<Vec<Bytes>> {
        let st = lock(&self.shared);
        let coll = &st.colls[self.res];
        if self.sent < coll.compacted_through {
            return None;
        }
        let from = coll.history.partition_point(|c| c.rv <= self.sent);
        let lines = coll
            .history
            .range(from..)
            .filter_map(|c| self.filter.event_for(c))
            .map(|(k, o)| watch_line(k, o))
            .collect();
        // Writes to other collections advance the global counter too; none of them concern this watch.
        self.sent = st.rv;
        Some(lines)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    use futures::StreamExt;
    use k8s_openapi::api::authorization::v1::{
        ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
    };
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};
    use k8s_openapi::api::events::v1::Event as K8sEvent;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
    use kube::runtime::watcher::{self, Event};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::timeout;

    const WAIT: Duration = Duration::from_secs(2);
    const SVC_LABEL: &str = "kubernetes.io/service-name";

    fn client(fk: &FakeKube) -> kube::Client {
        let config = kube::Config::new(fk.url().parse().expect("url"));
        kube::Client::try_from(config).expect("client")
    }

    fn meta(ns: &str, name: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        }
    }

    fn pod(ns: &str, name: &str) -> Pod {
        Pod {
            metadata: meta(ns, name),
            ..Default::default()
        }
    }

    fn slice(ns: &str, name: &str, service: &str, ready: bool) -> EndpointSlice {
        let mut metadata = meta(ns, name);
        metadata.labels = Some(BTreeMap::from([(
            SVC_LABEL.to_string(),
            service.to_string(),
        )]));
        let conditions = EndpointConditions {
            ready: Some(ready),
            ..Default::default()
        };
        EndpointSlice {
            metadata,
            address_type: "IPv4".into(),
            endpoints: vec![Endpoint {
                addresses: vec!["10.0.0.1".into()],
                conditions: Some(conditions),
                ..Default::default()
            }],
            ports: None,
        }
    }

    /// The HTTP code of a kube API error; panics on anything else.
    fn api_status(res: Result<impl std::fmt::Debug, kube::Error>) -> (u16, String, String) {
        match res {
            Err(kube::Error::Api(s)) => (s.code, s.reason, s.message),
            other => panic!("expected an API error, got {other:?}"),
        }
    }

    fn names<'a>(items: impl IntoIterator<Item = &'a EndpointSlice>) -> Vec<String> {
        let mut v: Vec<String> = items
            .into_iter()
            .filter_map(|s| s.metadata.name.clone())
            .collect();
        v.sort();
        v
    }

    type Watch = futures::stream::BoxStream<'static, Result<Event<EndpointSlice>, watcher::Error>>;

    fn watch_slices(fk: &FakeKube, labels: Option<&str>) -> Watch {
        let api: Api<EndpointSlice> = Api::namespaced(client(fk), "ns");
        let mut config = watcher::Config::default();
        if let Some(l) = labels {
            config = config.labels(l);
        }
        watcher::watcher(api, config).boxed()
    }

    /// Reads the stream until `InitDone`, returning the names seen in between.
    async fn until_init_done(w: &mut Watch) -> Vec<String> {
        let mut seen = Vec::new();
        loop {
            match timeout(WAIT, w.next()).await.expect("watcher stalled") {
                Some(Ok(Event::InitApply(s))) => seen.extend(s.metadata.name),
                Some(Ok(Event::InitDone)) => return seen,
                Some(Ok(_)) => {}
                Some(Err(e)) => panic!("watcher error before InitDone: {e}"),
                None => panic!("watcher ended"),
            }
        }
    }

    /// The next Apply or Delete event.
    async fn next_change(w: &mut Watch) -> Event<EndpointSlice> {
        loop {
            match timeout(WAIT, w.next())
                .await
                .expect("no change seen")
                .expect("ended")
            {
                Ok(e @ (Event::Apply(_) | Event::Delete(_))) => return e,
                Ok(_) => {}
                Err(e) => panic!("watcher error: {e}"),
            }
        }
    }

    /// One raw HTTP/1.1 request; returns (status code, whole response text).
    async fn raw(
        fk: &FakeKube,
        method: &str,
        target: &str,
        ctype: &str,
        body: &str,
    ) -> (u16, String) {
        let addr = fk.server.addr();
        let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
             Content-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut out = String::new();
        timeout(Duration::from_secs(3), s.read_to_string(&mut out))
            .await
            .expect("slow")
            .expect("read");
        let code = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        (code, out)
    }

    #[tokio::test]
    async fn pod_get_404_deleting_and_kubeconfig() {
        let fk = FakeKube::start().await.expect("start");
        fk.put_pod(pod("ns", "web-0"));
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("kubeconfig");
        fk.write_kubeconfig(&path, "ns").expect("write kubeconfig");
        let kc = kube::config::Kubeconfig::read_from(&path).expect("parse kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
            .await
            .expect("config");
        assert_eq!(config.default_namespace, "ns");
        let pods: Api<Pod> =
            Api::default_namespaced(kube::Client::try_from(config).expect("client"));

        let got = pods.get("web-0").await.expect("get pod");
        assert!(got.metadata.uid.as_deref().is_some_and(|u| u.len() == 36));
        assert!(got.metadata.resource_version.is_some());
        let (code, reason, msg) = api_status(pods.get("nope").await);
        assert_eq!(
            (code, reason.as_str(), msg.as_str()),
            (404, "NotFound", "pods \"nope\" not found")
        );

        fk.mark_deleting("ns", "web-0", Duration::from_secs(30));
        let got = pods.get("web-0").await.expect("get deleting pod");
        assert_eq!(got.metadata.deletion_grace_period_seconds, Some(30));
        let at = got
            .metadata
            .deletion_timestamp
            .expect("deletionTimestamp")
            .0;
        let left = at.duration_since(jiff::Timestamp::now()).as_secs_f64();
        assert!(
            (28.0..=30.0).contains(&left),
            "deletionTimestamp {left}s away"
        );
        assert_eq!(
            fk.pod("ns", "web-0").and_then(|p| p.metadata.uid),
            got.metadata.uid
        );

        fk.delete_pod("ns", "web-0");
        assert_eq!(api_status(pods.get("web-0").await).0, 404);
        assert!(fk.pod("ns", "web-0").is_none());
    }

    #[tokio::test]
    async fn watcher_lists_then_sees_modified() {
        let fk = FakeKube::start().await.expect("start");
        fk.put_endpoint_slice(slice("ns", "web-abc", "web", true));
        fk.put_endpoint_slice(slice("other", "elsewhere", "web", true));
        let mut w = watch_slices(&fk, None);
        assert_eq!(until_init_done(&mut w).await, vec!["web-abc"]);

        fk.update_endpoint_slice("ns", "web-abc", |s| {
            s.endpoints[0].conditions = Some(EndpointConditions {
                ready: Some(false),
                ..Default::default()
            });
        });
        let Event::Apply(s) = next_change(&mut w).await else {
            panic!("expected Apply")
        };
        let ready = s.endpoints[0].conditions.as_ref().and_then(|c| c.ready);
        assert_eq!(ready, Some(false));

        fk.delete_endpoint_slice("ns", "web-abc");
        assert!(
            matches!(next_change(&mut w).await, Event::Delete(s) if s.metadata.name.as_deref() == Some("web-abc"))
        );
        let watches = fk
            .requests()
            .into_iter()
            .filter(|r| r.query.contains("watch=true"))
            .count();
        assert!(
            watches >= 1
                && fk
                    .requests()
                    .iter()
                    .any(|r| r.query.contains("allowWatchBookmarks=true"))
        );
    }

    #[tokio::test]
    async fn label_selectors_filter_list_and_watch() {
        let fk = FakeKube::start().await.expect("start");
        for svc in ["a", "b", "c"] {
            fk.put_endpoint_slice(slice("ns", &format!("{svc}-1"), svc, true));
        }
        let api: Api<EndpointSlice> = Api::namespaced(client(&fk), "ns");
        let list = |sel: &str| {
            let (api, lp) = (api.clone(), ListParams::default().labels(sel));
            async move { names(&api.list(&lp).await.expect("list").items) }
        };
        assert_eq!(
            list("kubernetes.io/service-name in (a,b)").await,
            ["a-1", "b-1"]
        );
        assert_eq!(
            list("kubernetes.io/service-name notin (a, b)").await,
            ["c-1"]
        );
        assert_eq!(list("kubernetes.io/service-name!=a").await, ["b-1", "c-1"]);
        assert_eq!(list("kubernetes.io/service-name=c").await, ["c-1"]);
        assert_eq!(list(SVC_LABEL).await.len(), 3);
        assert!(list("!kubernetes.io/service-name").await.is_empty());
        let bad = api
            .list(&ListParams::default().labels("kubernetes.io/service-name in (a"))
            .await;
        assert_eq!(api_status(bad).0, 400);

        let mut w = watch_slices(&fk, Some("kubernetes.io/service-name in (a,b)"));
        let mut seen = until_init_done(&mut w).await;
        seen.sort();
        assert_eq!(seen, ["a-1", "b-1"]);
        // A change outside the selection is not delivered; the next one is.
        fk.update_endpoint_slice("ns", "c-1", |s| s.address_type = "IPv6".into());
        fk.update_endpoint_slice("ns", "a-1", |s| s.address_type = "IPv6".into());
        assert!(
            matches!(next_change(&mut w).await, Event::Apply(s) if s.metadata.name.as_deref() == Some("a-1"))
        );
        // Moving out of the selection is a DELETED for this watch.
        fk.update_endpoint_slice("ns", "b-1", |s| {
            s.metadata.labels = Some(BTreeMap::from([(SVC_LABEL.to_string(), "c".to_string())]));
        });
        assert!(
            matches!(next_change(&mut w).await, Event::Delete(s) if s.metadata.name.as_deref() == Some("b-1"))
        );
    }

    #[test]
    fn label_selector_parser() {
        let parsed = parse_label_selector("a in (x, y),b!=z,!c,d,e==f").expect("valid");
        assert_eq!(
            parsed,
            vec![
                Req::In("a".into(), vec!["x".into(), "y".into()]),
                Req::NotEq("b".into(), "z".into()),
                Req::NotExists("c".into()),
                Req::Exists("d".into()),
                Req::Eq("e".into(), "f".into()),
            ]
        );
        assert_eq!(
            parse_label_selector("").expect("empty is everything"),
            vec![]
        );
        for bad in ["a in (x", "a in ()", "in (x)", "a b", "a,,b", "a=(x)", "=x"] {
            assert!(
                parse_label_selector(bad).is_err(),
                "{bad:?} should not parse"
            );
        }
    }

    #[tokio::test]
    async fn deny_gives_forbidden_and_access_review_says_no() {
        let fk = FakeKube::start().await.expect("start");
        fk.put_pod(pod("ns", "web-0"));
        fk.deny("list", "discovery.k8s.io", "endpointslices");
        let c = client(&fk);
        let slices: Api<EndpointSlice> = Api::namespaced(c.clone(), "ns");
        let (code, reason, msg) = api_status(slices.list(&ListParams::default()).await);
        assert_eq!((code, reason.as_str()), (403, "Forbidden"));
        assert!(
            msg.contains(r#"cannot list resource "endpointslices" in API group "discovery.k8s.io" in the namespace "ns""#),
            "{msg}"
        );
        assert!(
            Api::<Pod>::namespaced(c.clone(), "ns")
                .get("web-0")
                .await
                .is_ok()
        );

        let reviews: Api<SelfSubjectAccessReview> = Api::all(c);
        let ask = |verb: &str| SelfSubjectAccessReview {
            spec: SelfSubjectAccessReviewSpec {
                resource_attributes: Some(ResourceAttributes {
                    namespace: Some("ns".into()),
                    verb: Some(verb.into()),
                    group: Some("discovery.k8s.io".into()),
                    resource: Some("endpointslices".into()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let answer = |r: SelfSubjectAccessReview| r.status.expect("status");
        let denied = answer(
            reviews
                .create(&PostParams::default(), &ask("list"))
                .await
                .expect("ssar"),
        );
        assert!(!denied.allowed && denied.reason.is_some());
        let allowed = answer(
            reviews
                .create(&PostParams::default(), &ask("watch"))
                .await
                .expect("ssar"),
        );
        assert!(allowed.allowed);

        fk.allow("list", "discovery.k8s.io", "endpointslices");
        assert!(slices.list(&ListParams::default()).await.is_ok());
    }

    #[tokio::test]
    async fn status_fault_is_consumed_once() {
        let fk = FakeKube::start().await.expect("start");
        fk.put_pod(pod("ns", "web-0"));
        fk.inject(Fault::new("/pods/web-0", FaultKind::Status(500)).method("GET"));
        let pods: Api<Pod> = Api::namespaced(client(&fk), "ns");
        let (code, reason, _) = api_status(pods.get("web-0").await);
        assert_eq!((code, reason.as_str()), (500, "InternalError"));
        assert!(pods.get("web-0").await.is_ok());
        let hits = fk
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/pods/web-0"))
            .count();
        assert_eq!(hits, 2);
    }

    #[tokio::test]
    async fn gone_in_stream_makes_the_watcher_relist() {
        let fk = FakeKube::start().await.expect("start");
        fk.put_endpoint_slice(slice("ns", "web-abc", "web", true));
        fk.inject(Fault::new("endpointslices", FaultKind::GoneInStream).watch(true));
        let mut w = watch_slices(&fk, None);
        assert_eq!(until_init_done(&mut w).await, ["web-abc"]);
        // The 410 surfaces as one error, then the watcher starts over with a LIST.
        let err = timeout(WAIT, w.next())
            .await
            .expect("stalled")
            .expect("ended");
        assert!(
            matches!(&err, Err(watcher::Error::WatchError(s)) if s.code == 410),
            "{err:?}"
        );
        assert_eq!(until_init_done(&mut w).await, ["web-abc"]);
        let lists = fk
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("endpointslices") && !r.query.contains("watch"))
            .count();
        assert_eq!(lists, 2);
    }

    #[tokio::test]
    async fn dropped_watch_resumes_from_history_without_relist() {
        let fk = FakeKube::start().await.expect("start");
        fk.put_endpoint_slice(slice("ns", "web-abc", "web", true));
        fk.inject(Fault::new("endpointslices", FaultKind::DropWatch).watch(true));
        let mut w = watch_slices(&fk, None);
        until_init_done(&mut w).await;
        fk.update_endpoint_slice("ns", "web-abc", |s| s.address_type = "IPv6".into());
        let Event::Apply(s) = next_change(&mut w).await else {
            panic!("expected Apply")
        };
        assert_eq!(s.address_type, "IPv6");
        let reqs = fk.requests();
        assert_eq!(
            reqs.iter().filter(|r| !r.query.contains("watch")).count(),
            1
        );
        assert!(
            reqs.iter()
                .filter(|r| r.query.contains("watch=true"))
                .count()
                >= 2
        );
    }

    #[tokio::test]
    async fn hang_holds_only_its_own_request() {
        let fk = FakeKube::start().await.expect("start");
        fk.put_pod(pod("ns", "web-0"));
        fk.inject(Fault::new("/pods/stuck", FaultKind::Hang));
        let pods: Api<Pod> = Api::namespaced(client(&fk), "ns");
        let stuck = timeout(Duration::from_millis(300), pods.get("stuck"));
        let fine = timeout(WAIT, pods.get("web-0"));
        let (stuck, fine) = tokio::join!(stuck, fine);
        assert!(stuck.is_err(), "a hung request must not be answered");
        assert!(fine.expect("other requests still served").is_ok());
    }

    #[tokio::test]
    async fn events_create_and_patch_are_stored() {
        let fk = FakeKube::start().await.expect("start");
        let events: Api<K8sEvent> = Api::namespaced(client(&fk), "ns");
        let ev = K8sEvent {
            metadata: meta("ns", "web-0.drain"),
            reason: Some("Drained".into()),
            note: Some("left the load balancer".into()),
            type_: Some("Normal".into()),
            ..Default::default()
        };
        let created = events
            .create(&PostParams::default(), &ev)
            .await
            .expect("create event");
        assert!(created.metadata.uid.is_some());
        let patch = json!({"note": "patched", "series": {"count": 2, "lastObservedTime": "2025-01-01T00:00:00.000000Z"}});
        events
            .patch(
                "web-0.drain",
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await
            .expect("patch event");
        let (code, _, _) = api_status(
            events
                .patch("nope", &PatchParams::default(), &Patch::Merge(&patch))
                .await,
        );
        assert_eq!(code, 404);

        // kube-rs' own Recorder: a create, then a merge patch for the repeat.
        let recorder = kube::runtime::events::Recorder::new(
            client(&fk),
            kube::runtime::events::Reporter {
                controller: "drainwait".into(),
                instance: None,
            },
        );
        let reference = kube::Resource::object_ref(&pod("ns", "web-0"), &());
        let rec_ev = kube::runtime::events::Event {
            type_: kube::runtime::events::EventType::Warning,
            reason: "DeadlineReached".into(),
            note: Some("still in rotation".into()),
            action: "Drain".into(),
            secondary: None,
        };
        recorder
            .publish(&rec_ev, &reference)
            .await
            .expect("publish");
        recorder
            .publish(&rec_ev, &reference)
            .await
            .expect("publish again");

        let stored = fk.events();
        assert_eq!(stored.len(), 2);
        assert_eq!(stored[0]["note"], "patched");
        assert_eq!(stored[0]["reason"], "Drained");
        assert_eq!(stored[1]["reason"], "DeadlineReached");
        assert_eq!(stored[1]["series"]["count"], 2);
    }

    #[tokio::test]
    async fn target_group_bindings_and_missing_crd() {
        let fk = FakeKube::start().await.expect("start");
        let spec = json!({"targetGroupARN": "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/tg/1",
            "targetType": "ip", "serviceRef": {"name": "web", "port": 80}});
        fk.put_target_group_binding("ns", "web-tgb", spec);
        let gvk = GroupVersionKind::gvk("elbv2.k8s.aws", "v1beta1", "TargetGroupBinding");
        let api: Api<DynamicObject> =
            Api::namespaced_with(client(&fk), "ns", &ApiResource::from_gvk(&gvk));
        let list = api.list(&ListParams::default()).await.expect("list tgbs");
        assert_eq!(list.items.len(), 1);
        assert_eq!(list.items[0].data["spec"]["serviceRef"]["name"], "web");

        fk.set_tgb_crd_installed(false);
        let (code, reason, msg) = api_status(api.list(&ListParams::default()).await);
        assert_eq!(
            (code, reason.as_str(), msg.as_str()),
            (404, "NotFound", NOT_FOUND_MSG)
        );
    }

    #[tokio::test]
    async fn raw_watch_replays_history_then_bookmarks() {
        let fk = FakeKube::start().await.expect("start");
        fk.set_bookmark_interval(Duration::from_millis(100));
        fk.put_endpoint_slice(slice("ns", "web-abc", "web", true));
        let from = fk.resource_version();
        fk.update_endpoint_slice("ns", "web-abc", |s| s.address_type = "IPv6".into());
        fk.delete_endpoint_slice("ns", "web-abc");
        let target = format!(
            "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices?watch=1&resourceVersion={from}&allowWatchBookmarks=true&timeoutSeconds=1"
        );
        let (code, body) = raw(&fk, "GET", &target, "application/json", "").await;
        assert_eq!(code, 200);
        let (m, d, b) = (
            body.find("\"MODIFIED\""),
            body.find("\"DELETED\""),
            body.find("\"BOOKMARK\""),
        );
        assert!(m.is_some() && m < d && d < b, "{body}");
        assert!(!body.contains("\"ADDED\""), "{body}");
    }

    #[tokio::test]
    async fn malformed_requests_get_4xx_not_panics() {
        let fk = FakeKube::start().await.expect("start");
        fk.put_endpoint_slice(slice("ns", "web-abc", "web", true));
        let events = "/apis/events.k8s.io/v1/namespaces/ns/events";
        let slices = "/apis/discovery.k8s.io/v1/namespaces/ns/endpointslices";
        let cases = [
            (
                "POST",
                events.to_string(),
                "application/json",
                "not json",
                400,
            ),
            ("POST", events.to_string(), "application/json", "[1,2]", 400),
            (
                "PATCH",
                format!("{events}/x"),
                "application/json-patch+json",
                "[]",
                415,
            ),
            (
                "GET",
                format!("{slices}?labelSelector=a%20in%20(b"),
                "",
                "",
                400,
            ),
            (
                "GET",
                format!("{slices}?watch=true&timeoutSeconds=soon"),
                "",
                "",
                400,
            ),
            (
                "GET",
                format!("{slices}?watch=true&resourceVersion=abc"),
                "",
                "",
                400,
            ),
            (
                "GET",
                format!("{slices}?fieldSelector=spec.x%3Dy"),
                "",
                "",
                400,
            ),
            (
                "GET",
                "/apis/x/v1/namespaces/ns/pods/a/b/c".to_string(),
                "",
                "",
                404,
            ),
            ("GET", "/nothing-here".to_string(), "", "", 404),
            ("DELETE", format!("{slices}/web-abc"), "", "", 405),
        ];
        for (method, target, ctype, body, want) in cases {
            let (code, text) = raw(&fk, method, &target, ctype, body).await;
            assert_eq!(code, want, "{method} {target}: {text}");
            assert!(text.contains("\"kind\":\"Status\""), "{text}");
        }
        // Cluster-wide list still works afterwards.
        let (code, text) = raw(
            &fk,
            "GET",
            "/apis/discovery.k8s.io/v1/endpointslices?limit=500",
            "",
            "",
        )
        .await;
        assert_eq!(code, 200);
        assert!(
            text.contains("\"EndpointSliceList\"") && text.contains("web-abc"),
            "{text}"
        );
    }
}
