//! A fake AWS ELBv2 (Elastic Load Balancing v2) endpoint on loopback.
//!
//! It speaks the AWS *query* protocol over real HTTP, so the official
//! `aws-sdk-elasticloadbalancingv2` client can be pointed at it with
//! `endpoint_url` and exercise its real serializers, XML parsers, error
//! mapping and retry classifier.
//!
//! Data flow: a test (or the demo / benchmark) seeds the shared [`State`]
//! through [`FakeElb`]'s methods — target groups, registered targets, state
//! changes scheduled in the future, faults, a rate limit. Every HTTP request
//! is parsed from its form-urlencoded body, recorded ([`ElbRequest`]), then
//! answered under the state lock: first queued faults, then the shared token
//! bucket, then the action itself. Scheduled state changes are applied lazily
//! whenever the state is read, against `tokio::time::Instant`, so no
//! background task exists and paused tokio time works for helper calls.
//! The lock is a std `Mutex` and is never held across an `.await`.
//!
//! Supported actions: `DescribeTargetHealth` and `DescribeTargetGroups` — the
//! two calls drainwait's IAM policy allows. Responses mirror the XML element
//! names the SDK's generated deserializers look for; errors use the
//! `<ErrorResponse><Error><Type/><Code/><Message/></Error>` envelope.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::time::Instant;

use super::http::{self, Body, Server};

/// XML namespace of every ELBv2 response.
const XMLNS: &str = "http://elasticloadbalancing.amazonaws.com/doc/2015-12-01/";
/// The reason that means "this target is not (or no longer) registered".
const NOT_REGISTERED: &str = "Target.NotRegistered";

/// A running fake ELBv2 endpoint; stops serving when dropped.
pub struct FakeElb {
    server: Server,
    state: Arc<Mutex<State>>,
}

/// A token bucket shared by all `Describe*` calls (AWS throttles per account
/// and region; its documented example is 40 burst, 10/s refill).
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    /// Bucket size; the bucket starts full.
    pub burst: f64,
    /// Tokens added per second, up to `burst`.
    pub refill_per_sec: f64,
}

/// A fault answered instead of the real response.
#[derive(Clone, Debug)]
pub struct ElbFault {
    /// Only requests with this `Action` are affected; `None` = any action.
    pub action: Option<String>,
    /// What to answer.
    pub kind: ElbFaultKind,
    /// How many matching requests get the fault before it is used up.
    pub times: usize,
}

/// The kinds of injectable fault.
#[derive(Clone, Debug)]
pub enum ElbFaultKind {
    /// HTTP 400 `Throttling` / "Rate exceeded".
    Throttling,
    /// HTTP 500 `InternalFailure`.
    InternalError,
    /// Never answer (the connection stays open until the client gives up).
    Hang,
    /// HTTP 400 `TargetGroupNotFound`.
    TargetGroupNotFound,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct ElbRequest {
    /// The `Action` parameter (empty when missing).
    pub action: String,
    /// `TargetGroupArn`, when sent.
    pub target_group_arn: Option<String>,
    /// `Targets.member.N.{Id,Port}`, in member order.
    pub targets: Vec<(String, Option<u16>)>,
    /// `Names.member.N` (DescribeTargetGroups), in member order.
    pub names: Vec<String>,
    /// `"ok"`, the error code answered, or `"Hang"`.
    pub outcome: String,
    /// When the request arrived.
    pub at: std::time::Instant,
    /// Whether an `Authorization` header (SigV4) was present.
    pub authorization_present: bool,
    /// The region of the SigV4 credential scope (`Credential=KEY/DATE/REGION/...`).
    pub signing_region: Option<String>,
}

/// Totals since start.
#[derive(Clone, Debug, Default)]
pub struct ElbStats {
    /// `DescribeTargetHealth` calls, whatever their outcome.
    pub describe_target_health: usize,
    /// `DescribeTargetGroups` calls, whatever their outcome.
    pub describe_target_groups: usize,
    /// Requests answered `Throttling` (rate limit or injected).
    pub throttled: usize,
    /// Requests answered with any other error, or hung.
    pub errors: usize,
}

/// A realistic target group ARN for `name` (region us-east-1, account
/// 123456789012, a stable per-name suffix), for tests and the demo.
pub fn target_group_arn(name: &str) -> String {
    // FNV-1a: a stable suffix without pulling in a hasher whose output may change.
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/{name}/{hash:016x}")
}

struct Group {
    name: String,
    port: u16,
    /// Registered targets in registration order (AWS lists them that way, too).
    targets: Vec<Target>,
}

struct Target {
    id: String,
    port: u16,
    state: String,
    reason: Option<String>,
    /// Pending changes, sorted by time; applied lazily by [`State::advance`].
    steps: VecDeque<(Instant, String, Option<String>)>,
}

struct State {
    /// Keyed by ARN; BTreeMap so listings are deterministic.
    groups: BTreeMap<String, Group>,
    invalid_ids: HashSet<String>,
    /// The limit, its current token count and when it was last refilled.
    bucket: Option<(TokenBucket, f64, Instant)>,
    faults: VecDeque<ElbFault>,
    requests: Vec<ElbRequest>,
    stats: ElbStats,
    rng: StdRng,
}

impl State {
    /// Apply every scheduled step that is due; a step to `Target.NotRegistered`
    /// removes the target, as the end of AWS's deregistration delay does.
    fn advance(&mut self, now: Instant) {
        for group in self.groups.values_mut() {
            for t in &mut group.targets {
                while t.steps.front().is_some_and(|(at, _, _)| *at <= now) {
                    if let Some((_, state, reason)) = t.steps.pop_front() {
                        t.state = state;
                        t.reason = reason;
                    }
                }
            }
            group
                .targets
                .retain(|t| t.reason.as_deref() != Some(NOT_REGISTERED));
        }
    }

    /// The group, created on first use so helpers can be called in any order.
    fn group(&mut self, arn: &str, port: u16) -> &mut Group {
        self.groups.entry(arn.to_string()).or_insert_with(|| Group {
            name: arn.split('/').nth(1).unwrap_or(arn).to_string(),
            port,
            targets: Vec::new(),
        })
    }

    /// The registration `(id, port)`, created in `state` when missing.
    fn target(
        &mut self,
        arn: &str,
        id: &str,
        port: u16,
        state: &str,
        reason: Option<&str>,
    ) -> &mut Target {
        let group = self.group(arn, port);
        let idx = match group
            .targets
            .iter()
            .position(|t| t.id == id && t.port == port)
        {
            Some(i) => i,
            None => {
                group.targets.push(Target {
                    id: id.to_string(),
                    port,
                    state: state.to_string(),
                    reason: reason.map(str::to_string),
                    steps: VecDeque::new(),
                });
                group.targets.len() - 1
            }
        };
        &mut group.targets[idx]
    }

    fn request_id(&mut self) -> String {
        let v: u128 = self.rng.random();
        let h = format!("{v:032x}");
        format!(
            "{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        )
    }

    /// Take one token; `false` when the bucket is empty.
    fn take_token(&mut self, now: Instant) -> bool {
        let Some((limit, tokens, last)) = &mut self.bucket else {
            return true;
        };
        let elapsed = now.saturating_duration_since(*last).as_secs_f64();
        *tokens = (*tokens + elapsed * limit.refill_per_sec).min(limit.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// The first queued fault matching `action`, used up by one.
    fn take_fault(&mut self, action: &str) -> Option<ElbFaultKind> {
        let idx = self
            .faults
            .iter()
            .position(|f| f.times > 0 && f.action.as_deref().is_none_or(|a| a == action))?;
        let fault = &mut self.faults[idx];
        fault.times -= 1;
        let kind = fault.kind.clone();
        if fault.times == 0 {
            self.faults.remove(idx);
        }
        Some(kind)
    }
}

impl FakeElb {
    /// Start on `127.0.0.1` with a free port.
    pub async fn start() -> std::io::Result<FakeElb> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Start on `bind`.
    pub async fn start_on(bind: SocketAddr) -> std::io::Result<FakeElb> {
        let state = Arc::new(Mutex::new(State {
            groups: BTreeMap::new(),
            invalid_ids: HashSet::new(),
            bucket: None,
            faults: VecDeque::new(),
            requests: Vec::new(),
            stats: ElbStats::default(),
            rng: StdRng::from_os_rng(),
        }));
        let shared = state.clone();
        let handler: http::Handler = Arc::new(move |req| {
            // Decide synchronously under the lock; only a hang needs to await.
            let reply = handle(&shared, &req);
            Box::pin(async move {
                match reply {
                    Some(resp) => resp,
                    None => futures::future::pending().await,
                }
            })
        });
        let server = Server::start(bind, handler).await?;
        Ok(FakeElb { server, state })
    }

    /// `http://ADDR` — the SDK's `endpoint_url`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Create (or rename / re-port) a target group; `port` is its default
    /// port, used for requested targets that carry none.
    pub fn add_target_group(&self, arn: &str, name: &str, port: u16) {
        let mut st = self.lock();
        let group = st.group(arn, port);
        group.name = name.to_string();
        group.port = port;
    }

    /// Register `id:port` as `healthy`, cancelling anything scheduled for it.
    /// An unknown group is created with a name taken from the ARN.
    pub fn register(&self, arn: &str, id: &str, port: u16) {
        self.set_state(arn, id, port, "healthy", None);
    }

    /// Set the state now, cancelling scheduled steps. A reason of
    /// `Target.NotRegistered` deregisters the target at once.
    pub fn set_state(&self, arn: &str, id: &str, port: u16, state: &str, reason: Option<&str>) {
        let mut st = self.lock();
        st.advance(Instant::now());
        let t = st.target(arn, id, port, state, reason);
        t.state = state.to_string();
        t.reason = reason.map(str::to_string);
        t.steps.clear();
        st.advance(Instant::now());
    }

    /// At `now + d` for each step, switch to `(state, reason)`. Steps add to
    /// those already pending. A step with reason `Target.NotRegistered`
    /// deregisters the target. An unregistered target is registered now as
    /// `initial` / `Elb.RegistrationInProgress`.
    pub fn schedule(
        &self,
        arn: &str,
        id: &str,
        port: u16,
        steps: Vec<(Duration, String, Option<String>)>,
    ) {
        let now = Instant::now();
        let mut st = self.lock();
        st.advance(now);
        let t = st.target(arn, id, port, "initial", Some("Elb.RegistrationInProgress"));
        t.steps
            .extend(steps.into_iter().map(|(d, s, r)| (now + d, s, r)));
        t.steps.make_contiguous().sort_by_key(|(at, _, _)| *at);
    }

    /// Start deregistering: `draining` / `Target.DeregistrationInProgress` now,
    /// not registered once `delay` (the group's deregistration delay) is over.
    pub fn deregister(&self, arn: &str, id: &str, port: u16, delay: Duration) {
        self.set_state(
            arn,
            id,
            port,
            "draining",
            Some("Target.DeregistrationInProgress"),
        );
        let steps = vec![(
            delay,
            "unused".to_string(),
            Some(NOT_REGISTERED.to_string()),
        )];
        self.schedule(arn, id, port, steps);
    }

    /// What DescribeTargetHealth would answer for `id:port` right now:
    /// `None` only when the group is unknown; an unregistered target reads
    /// `("unused", Some("Target.NotRegistered"))`.
    pub fn state_of(&self, arn: &str, id: &str, port: u16) -> Option<(String, Option<String>)> {
        let mut st = self.lock();
        st.advance(Instant::now());
        let group = st.groups.get(arn)?;
        Some(
            match group.targets.iter().find(|t| t.id == id && t.port == port) {
                Some(t) => (t.state.clone(), t.reason.clone()),
                None => ("unused".to_string(), Some(NOT_REGISTERED.to_string())),
            },
        )
    }

    /// Any DescribeTargetHealth naming one of these ids fails as a whole with
    /// `InvalidTarget` (what AWS does for an IP that left the VPC). Replaces
    /// the previous set.
    pub fn set_invalid_targets(&self, ids: &[&str]) {
        self.lock().invalid_ids = ids.iter().map(|s| s.to_string()).collect();
    }

    /// Rate-limit all `Describe*` calls with one bucket (starting full);
    /// `None` removes the limit.
    pub fn set_rate_limit(&self, limit: Option<TokenBucket>) {
        self.lock().bucket = limit.map(|l| (l, l.burst, Instant::now()));
    }

    /// Queue a fault; faults are consulted in the order they were injected,
    /// and a request uses up at most one. `times: 0` does nothing.
    pub fn inject(&self, fault: ElbFault) {
        if fault.times > 0 {
            self.lock().faults.push_back(fault);
        }
    }

    /// Every request received so far, oldest first.
    pub fn requests(&self) -> Vec<ElbRequest> {
        self.lock().requests.clone()
    }

    /// Totals since start.
    pub fn stats(&self) -> ElbStats {
        self.lock().stats.clone()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere must not turn every later call into a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// An error answer: HTTP status, `Type`, `Code`, `Message`.
struct ApiError(StatusCode, &'static str, &'static str, String);

impl ApiError {
    fn sender(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError(StatusCode::BAD_REQUEST, "Sender", code, message.into())
    }
    fn validation(message: impl Into<String>) -> ApiError {
        Self::sender("ValidationError", message)
    }
    fn not_found() -> ApiError {
        Self::sender("TargetGroupNotFound", "One or more target groups not found")
    }
    fn throttling() -> ApiError {
        Self::sender("Throttling", "Rate exceeded")
    }
    fn internal() -> ApiError {
        let msg = "We encountered an internal error. Please try again.";
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Receiver",
            "InternalFailure",
            msg.into(),
        )
    }
}

/// The request parameters that matter, parsed from the form.
#[derive(Default)]
struct Params {
    action: String,
    target_group_arn: Option<String>,
    targets: Vec<(String, Option<u16>)>,
    arns: Vec<String>,
    names: Vec<String>,
    /// A `ValidationError` message when a parameter was malformed.
    invalid: Option<String>,
}

/// Answer one request; `None` means hang.
fn handle(shared: &Mutex<State>, req: &Request<Bytes>) -> Option<Response<Body>> {
    // Query-protocol clients POST a form; a GET with a query string is accepted too.
    let form: &[u8] = if req.method() == Method::POST {
        req.body()
    } else {
        req.uri().query().unwrap_or("").as_bytes()
    };
    let authorization = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let authorization_present = authorization.is_some();
    // Only the scope's region is kept: the rest of the header is a signature.
    let signing_region = authorization
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(2))
        .map(str::to_string);
    let params = parse_params(&parse_form(form));

    let mut st = shared.lock().unwrap_or_else(|e| e.into_inner());
    let now = Instant::now();
    st.advance(now);
    let request_id = st.request_id();
    let result = answer(&mut st, &params, now);
    let outcome = match &result {
        Ok(_) => "ok".to_string(),
        Err(None) => "Hang".to_string(),
        Err(Some(e)) => e.2.to_string(),
    };
    match params.action.as_str() {
        "DescribeTargetHealth" => st.stats.describe_target_health += 1,
        "DescribeTargetGroups" => st.stats.describe_target_groups += 1,
        _ => {}
    }
    match outcome.as_str() {
        "ok" => {}
        "Throttling" => st.stats.throttled += 1,
        _ => st.stats.errors += 1,
    }
    st.requests.push(ElbRequest {
        action: params.action.clone(),
        target_group_arn: params.target_group_arn.clone(),
        targets: params.targets.clone(),
        names: params.names.clone(),
        outcome,
        at: std::time::Instant::now(),
        authorization_present,
        signing_region,
    });
    drop(st);

    let (status, body) = match result {
        Ok(result) => {
            let a = &params.action;
            let body = format!(
                "<{a}Response xmlns=\"{XMLNS}\"><{a}Result>{result}</{a}Result>\
                 <ResponseMetadata><RequestId>{request_id}</RequestId></ResponseMetadata></{a}Response>"
            );
            (StatusCode::OK, body)
        }
        Err(None) => return None,
        Err(Some(ApiError(status, kind, code, message))) => {
            let body = format!(
                "<ErrorResponse xmlns=\"{XMLNS}\"><Error><Type>{kind}</Type><Code>{code}</Code>\
                 <Message>{}</Message></Error><RequestId>{request_id}</RequestId></ErrorResponse>",
                esc(&message)
            );
            (status, body)
        }
    };
    let mut resp = http::full(status, "text/xml", body);
    if let Ok(v) = request_id.parse() {
        resp.headers_mut().insert("x-amzn-requestid", v);
    }
    Some(resp)
}

/// The `…Result` element's content, or the error (`None` = hang).
fn answer(st: &mut State, p: &Params, now: Instant) -> Result<String, Option<ApiError>> {
    if p.action.is_empty() {
        return Err(Some(ApiError::sender("MissingAction", "MissingAction")));
    }
    if !matches!(
        p.action.as_str(),
        "DescribeTargetHealth" | "DescribeTargetGroups"
    ) {
        let msg = format!(
            "Could not find operation {} for version 2015-12-01",
            p.action
        );
        return Err(Some(ApiError::sender("InvalidAction", msg)));
    }
    if let Some(msg) = &p.invalid {
        return Err(Some(ApiError::validation(msg.clone())));
    }
    match st.take_fault(&p.action) {
        Some(ElbFaultKind::Hang) => return Err(None),
        Some(ElbFaultKind::Throttling) => return Err(Some(ApiError::throttling())),
        Some(ElbFaultKind::InternalError) => return Err(Some(ApiError::internal())),
        Some(ElbFaultKind::TargetGroupNotFound) => return Err(Some(ApiError::not_found())),
        None => {}
    }
    if !st.take_token(now) {
        return Err(Some(ApiError::throttling()));
    }
    if p.action == "DescribeTargetHealth" {
        describe_target_health(st, p).map_err(Some)
    } else {
        describe_target_groups(st, p).map_err(Some)
    }
}

fn describe_target_health(st: &State, p: &Params) -> Result<String, ApiError> {
    let Some(arn) = &p.target_group_arn else {
        return Err(ApiError::validation(
            "1 validation error detected: Value null at 'targetGroupArn' failed to satisfy constraint: Member must not be null",
        ));
    };
    let group = st.groups.get(arn).ok_or_else(ApiError::not_found)?;
    let invalid: Vec<&str> = p
        .targets
        .iter()
        .map(|(id, _)| id.as_str())
        .filter(|id| st.invalid_ids.contains(*id))
        .collect();
    if !invalid.is_empty() {
        let msg = format!(
            "The following targets are not valid: {}",
            invalid.join(", ")
        );
        return Err(ApiError::sender("InvalidTarget", msg));
    }
    let mut out = String::from("<TargetHealthDescriptions>");
    if p.targets.is_empty() {
        for t in &group.targets {
            out += &member(&t.id, t.port, Some(t.port), &t.state, t.reason.as_deref());
        }
    } else {
        for (id, port) in &p.targets {
            // A target without a port matches all its registrations (or the group's port).
            let found: Vec<&Target> = group
                .targets
                .iter()
                .filter(|t| &t.id == id && port.is_none_or(|p| p == t.port))
                .collect();
            for t in &found {
                out += &member(&t.id, t.port, Some(t.port), &t.state, t.reason.as_deref());
            }
            if found.is_empty() {
                out += &member(
                    id,
                    port.unwrap_or(group.port),
                    None,
                    "unused",
                    Some(NOT_REGISTERED),
                );
            }
        }
    }
    out += "</TargetHealthDescriptions>";
    Ok(out)
}

/// One `TargetHealthDescriptions` member.
fn member(id: &str, port: u16, hc_port: Option<u16>, state: &str, reason: Option<&str>) -> String {
    let mut m = format!(
        "<member><Target><Id>{}</Id><Port>{port}</Port></Target>",
        esc(id)
    );
    if let Some(hc) = hc_port {
        m += &format!("<HealthCheckPort>{hc}</HealthCheckPort>");
    }
    m += &format!("<TargetHealth><State>{}</State>", esc(state));
    if let Some(r) = reason {
        m += &format!(
            "<Reason>{}</Reason><Description>{}</Description>",
            esc(r),
            esc(describe(r))
        );
    }
    m + "</TargetHealth></member>"
}

/// The human description AWS sends with a reason code.
fn describe(reason: &str) -> &'static str {
    match reason {
        "Target.DeregistrationInProgress" => "Target deregistration is in progress",
        "Target.NotRegistered" => "Target is not registered to the target group",
        "Elb.RegistrationInProgress" => "Target registration is in progress",
        "Elb.InitialHealthChecking" => "Initial health checks in progress",
        "Target.FailedHealthChecks" => "Health checks failed",
        "Target.Timeout" => "Request timed out",
        "Target.NotInUse" => {
            "Target group is not configured to receive traffic from the load balancer"
        }
        "Target.InvalidState" => "Target is in the stopped or terminated state",
        "Elb.InternalError" => "Health checks failed due to an internal error",
        _ => "Simulated state",
    }
}

fn describe_target_groups(st: &State, p: &Params) -> Result<String, ApiError> {
    if !p.arns.is_empty() && !p.names.is_empty() {
        return Err(ApiError::validation(
            "Target group names and target group ARNs cannot be specified at the same time",
        ));
    }
    let mut found: Vec<(&String, &Group)> = Vec::new();
    if !p.arns.is_empty() {
        for arn in &p.arns {
            found.push(
                st.groups
                    .get_key_value(arn)
                    .ok_or_else(ApiError::not_found)?,
            );
        }
    } else if !p.names.is_empty() {
        for name in &p.names {
            found.push(
                st.groups
                    .iter()
                    .find(|(_, g)| &g.name == name)
                    .ok_or_else(ApiError::not_found)?,
            );
        }
    } else {
        found.extend(st.groups.iter());
    }
    let mut out = String::from("<TargetGroups>");
    for (arn, g) in found {
        out += &format!(
            "<member><TargetGroupArn>{}</TargetGroupArn><TargetGroupName>{}</TargetGroupName>\
             <Protocol>HTTP</Protocol><Port>{}</Port><VpcId>vpc-sim</VpcId><TargetType>ip</TargetType>\
             <HealthCheckProtocol>HTTP</HealthCheckProtocol><HealthCheckPort>traffic-port</HealthCheckPort>\
             <HealthCheckPath>/</HealthCheckPath><LoadBalancerArns/></member>",
            esc(arn),
            esc(&g.name),
            g.port
        );
    }
    out += "</TargetGroups>";
    Ok(out)
}

/// Pick out the parameters from `key=value` pairs. A malformed one (a port
/// that is not a port, a target without an Id) is noted in `invalid` rather
/// than failing, so the request is still recorded with its action.
fn parse_params(pairs: &[(String, String)]) -> Params {
    let mut p = Params::default();
    // Member lists are keyed by their 1-based index, which may arrive in any order.
    let mut targets: BTreeMap<usize, (Option<String>, Option<u16>)> = BTreeMap::new();
    let mut arns = BTreeMap::new();
    let mut names = BTreeMap::new();
    for (k, v) in pairs {
        let member = |prefix: &str| {
            k.strip_prefix(prefix)
                .and_then(|rest| rest.parse::<usize>().ok())
        };
        if k == "Action" {
            p.action = v.clone();
        } else if k == "TargetGroupArn" {
            p.target_group_arn = Some(v.clone());
        } else if let Some(n) = member("TargetGroupArns.member.") {
            arns.insert(n, v.clone());
        } else if let Some(n) = member("Names.member.") {
            names.insert(n, v.clone());
        } else if let Some(rest) = k.strip_prefix("Targets.member.") {
            let (n, field) = rest.split_once('.').unwrap_or((rest, ""));
            let Ok(n) = n.parse::<usize>() else {
                p.invalid = Some(format!("Invalid parameter {k}"));
                continue;
            };
            let entry = targets.entry(n).or_default();
            match field {
                "Id" => entry.0 = Some(v.clone()),
                "Port" => match v.parse::<u16>() {
                    Ok(port) if port > 0 => entry.1 = Some(port),
                    _ => {
                        p.invalid = Some(format!(
                            "Value '{v}' at '{k}' failed to satisfy constraint: 1 <= port <= 65535"
                        ))
                    }
                },
                _ => {}
            }
        }
    }
    for (n, (id, port)) in targets {
        match id {
            Some(id) => p.targets.push((id, port)),
            None => {
                p.invalid = Some(format!(
                    "Value null at 'Targets.member.{n}.Id' failed to satisfy constraint: Member must not be null"
                ))
            }
        }
    }
    p.arns = arns.into_values().collect();
    p.names = names.into_values().collect();
    p
}

/// Split an `application/x-www-form-urlencoded` body into decoded pairs.
fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    body.split(|b| *b == b'&')
        .filter(|s| !s.is_empty())
        .map(|pair| {
            let mut kv = pair.splitn(2, |b| *b == b'=');
            let k = kv.next().unwrap_or_default();
            let v = kv.next().unwrap_or_default();
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

/// `+` → space, `%XX` → byte; a malformed escape is kept as is.
fn percent_decode(s: &[u8]) -> String {
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        let escaped = match s.get(i..i + 3) {
            Some([b'%', h, l]) => hex(*h).zip(hex(*l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (escaped, s[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
            }
            (None, b'+') => {
                out.push(b' ');
                i += 1;
            }
            (None, b) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Escape text for an XML element body.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use aws_sdk_elasticloadbalancingv2 as elbv2;
    use elbv2::config::retry::RetryConfig;
    use elbv2::config::timeout::TimeoutConfig;
    use elbv2::config::{Credentials, Region};
    use elbv2::error::ProvideErrorMetadata;
    use elbv2::operation::describe_target_groups::DescribeTargetGroupsError;
    use elbv2::operation::describe_target_health::DescribeTargetHealthError;
    use elbv2::types::{
        TargetDescription, TargetHealthReasonEnum as Reason, TargetHealthStateEnum as StateEnum,
    };
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// The SDK client drainwait would build, aimed at the fake.
    fn client_with(elb: &FakeElb, retry: RetryConfig) -> elbv2::Client {
        let config = elbv2::Config::builder()
            .behavior_version_latest()
            .region(Region::new("us-east-1"))
            .endpoint_url(elb.url())
            .credentials_provider(Credentials::new("AKIDSIM", "secret", None, None, "sim"))
            .http_client(aws_smithy_http_client::Builder::new().build_http())
            .retry_config(retry)
            .build();
        elbv2::Client::from_conf(config)
    }

    fn client(elb: &FakeElb) -> elbv2::Client {
        client_with(elb, RetryConfig::disabled())
    }

    fn target(id: &str, port: i32) -> TargetDescription {
        TargetDescription::builder().id(id).port(port).build()
    }

    /// (id, port, state, reason) for every description, in order.
    async fn health(
        c: &elbv2::Client,
        arn: &str,
        targets: &[(&str, i32)],
    ) -> Vec<(String, i32, StateEnum, Option<Reason>)> {
        let mut req = c.describe_target_health().target_group_arn(arn);
        for (id, port) in targets {
            req = req.targets(target(id, *port));
        }
        let out = req.send().await.expect("DescribeTargetHealth succeeds");
        out.target_health_descriptions()
            .iter()
            .map(|d| {
                let t = d.target().expect("target");
                let h = d.target_health().expect("target health");
                let state = h.state().cloned().expect("state");
                (
                    t.id().unwrap_or_default().to_string(),
                    t.port().unwrap_or(0),
                    state,
                    h.reason().cloned(),
                )
            })
            .collect()
    }

    async fn raw_post(elb: &FakeElb, body: &str) -> (u16, String) {
        let mut s = tokio::net::TcpStream::connect(elb.addr())
            .await
            .expect("connect");
        let req = format!(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.expect("write");
        let mut resp = String::new();
        s.read_to_string(&mut resp).await.expect("read");
        let status = resp.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
        (status, resp)
    }

    #[tokio::test]
    async fn specific_targets_report_their_states() {
        let elb = FakeElb::start().await.unwrap();
        let arn = target_group_arn("argo-server");
        elb.add_target_group(&arn, "argo-server", 2746);
        elb.register(&arn, "10.0.0.1", 2746);
        elb.set_state(
            &arn,
            "10.0.0.2",
            2746,
            "draining",
            Some("Target.DeregistrationInProgress"),
        );
        elb.set_state(
            &arn,
            "10.0.0.3",
            2746,
            "unhealthy.draining",
            Some("Target.DeregistrationInProgress"),
        );
        let c = client(&elb);

        let got = health(
            &c,
            &arn,
            &[("10.0.0.2", 2746), ("10.0.0.1", 2746), ("10.0.0.3", 2746)],
        )
        .await;
        assert_eq!(
            got,
            vec![
                (
                    "10.0.0.2".into(),
                    2746,
                    StateEnum::Draining,
                    Some(Reason::DeregistrationInProgress)
                ),
                ("10.0.0.1".into(), 2746, StateEnum::Healthy, None),
                (
                    "10.0.0.3".into(),
                    2746,
                    StateEnum::UnhealthyDraining,
                    Some(Reason::DeregistrationInProgress)
                ),
            ]
        );
        // Without Targets: every registered target, in registration order.
        let all = health(&c, &arn, &[]).await;
        assert_eq!(
            all.iter().map(|t| t.0.as_str()).collect::<Vec<_>>(),
            ["10.0.0.1", "10.0.0.2", "10.0.0.3"]
        );

        let reqs = elb.requests();
        assert_eq!(reqs.len(), 2);
        assert_eq!(reqs[0].action, "DescribeTargetHealth");
        assert_eq!(reqs[0].target_group_arn.as_deref(), Some(arn.as_str()));
        assert_eq!(reqs[0].targets[1], ("10.0.0.1".to_string(), Some(2746)));
        assert!(reqs[0].authorization_present, "the SDK signs with SigV4");
        assert_eq!(reqs[0].outcome, "ok");
        assert_eq!(elb.stats().describe_target_health, 2);
    }

    #[tokio::test]
    async fn unregistered_target_is_unused_not_registered() {
        let elb = FakeElb::start().await.unwrap();
        let arn = target_group_arn("tg");
        elb.add_target_group(&arn, "tg", 80);
        let got = health(&client(&elb), &arn, &[("10.9.9.9", 8080)]).await;
        assert_eq!(
            got,
            vec![(
                "10.9.9.9".into(),
                8080,
                StateEnum::Unused,
                Some(Reason::NotRegistered)
            )]
        );
    }

    /// Real HTTP round trips work under paused tokio time (loopback I/O on the
    /// test's current-thread runtime), so realistic delays cost nothing.
    #[tokio::test(start_paused = true)]
    async fn scheduled_transitions_reach_the_sdk() {
        let elb = FakeElb::start().await.unwrap();
        let arn = target_group_arn("tg");
        elb.register(&arn, "10.0.0.1", 8080);
        let secs = Duration::from_secs;
        elb.schedule(
            &arn,
            "10.0.0.1",
            8080,
            vec![
                // Out of order on purpose: steps are sorted by time.
                (secs(310), "unused".into(), Some(NOT_REGISTERED.into())),
                (
                    secs(10),
                    "draining".into(),
                    Some("Target.DeregistrationInProgress".into()),
                ),
            ],
        );
        let c = client_with(&elb, RetryConfig::standard());
        let t = [("10.0.0.1", 8080)];
        let state =
            |v: Vec<(String, i32, StateEnum, Option<Reason>)>| (v[0].2.clone(), v[0].3.clone());
        assert_eq!(
            state(health(&c, &arn, &t).await),
            (StateEnum::Healthy, None)
        );
        tokio::time::sleep(secs(10)).await;
        for _ in 0..5 {
            let draining = (StateEnum::Draining, Some(Reason::DeregistrationInProgress));
            assert_eq!(state(health(&c, &arn, &t).await), draining);
            tokio::time::sleep(secs(2)).await;
        }
        tokio::time::sleep(secs(300)).await;
        assert_eq!(
            state(health(&c, &arn, &t).await),
            (StateEnum::Unused, Some(Reason::NotRegistered))
        );
        assert!(
            health(&c, &arn, &[]).await.is_empty(),
            "a deregistered target leaves the listing"
        );
        assert_eq!(elb.stats().describe_target_health, 8);
    }

    #[tokio::test(start_paused = true)]
    async fn deregister_drains_then_removes_under_paused_time() {
        let elb = FakeElb::start().await.unwrap();
        let arn = target_group_arn("tg");
        elb.register(&arn, "10.0.0.1", 8080);
        elb.deregister(&arn, "10.0.0.1", 8080, Duration::from_secs(300));
        let draining = (
            "draining".to_string(),
            Some("Target.DeregistrationInProgress".to_string()),
        );
        assert_eq!(elb.state_of(&arn, "10.0.0.1", 8080), Some(draining.clone()));
        tokio::time::advance(Duration::from_secs(299)).await;
        assert_eq!(elb.state_of(&arn, "10.0.0.1", 8080), Some(draining));
        tokio::time::advance(Duration::from_secs(1)).await;
        let gone = ("unused".to_string(), Some(NOT_REGISTERED.to_string()));
        assert_eq!(elb.state_of(&arn, "10.0.0.1", 8080), Some(gone));
        assert_eq!(elb.state_of("arn:unknown", "10.0.0.1", 8080), None);
    }

    #[tokio::test]
    async fn invalid_target_fails_the_whole_call() {
        let elb = FakeElb::start().await.unwrap();
        let arn = target_group_arn("tg");
        elb.register(&arn, "10.0.0.1", 8080);
        elb.set_invalid_targets(&["10.0.0.2"]);
        let c = client(&elb);
        let err = c
            .describe_target_health()
            .target_group_arn(&arn)
            .targets(target("10.0.0.1", 8080))
            .targets(target("10.0.0.2", 8080))
            .send()
            .await
            .expect_err("InvalidTarget");
        match err.into_service_error() {
            DescribeTargetHealthError::InvalidTargetException(e) => {
                assert!(
                    e.message().unwrap_or_default().contains("10.0.0.2"),
                    "{e:?}"
                )
            }
            other => panic!("expected InvalidTargetException, got {other:?}"),
        }
        // Alone, the valid target still answers.
        assert_eq!(
            health(&c, &arn, &[("10.0.0.1", 8080)]).await[0].2,
            StateEnum::Healthy
        );
        assert_eq!(elb.requests()[0].outcome, "InvalidTarget");
    }

    #[tokio::test]
    async fn unknown_group_is_target_group_not_found() {
        let elb = FakeElb::start().await.unwrap();
        let c = client(&elb);
        let err = c
            .describe_target_health()
            .target_group_arn(target_group_arn("missing"))
            .send()
            .await
            .expect_err("not found");
        assert!(matches!(
            err.into_service_error(),
            DescribeTargetHealthError::TargetGroupNotFoundException(_)
        ));
        let err = c
            .describe_target_groups()
            .names("missing")
            .send()
            .await
            .expect_err("not found");
        assert!(matches!(
            err.into_service_error(),
            DescribeTargetGroupsError::TargetGroupNotFoundException(_)
        ));
        assert_eq!(elb.stats().errors, 2);
    }

    #[tokio::test]
    async fn token_bucket_throttles_and_refills() {
        let elb = FakeElb::start().await.unwrap();
        let arn = target_group_arn("tg");
        elb.register(&arn, "10.0.0.1", 8080);
        elb.set_rate_limit(Some(TokenBucket {
            burst: 2.0,
            refill_per_sec: 10.0,
        }));
        let c = client(&elb);
        let send = || c.describe_target_health().target_group_arn(&arn).send();
        assert!(send().await.is_ok());
        // DescribeTargetGroups draws from the same bucket.
        assert!(c.describe_target_groups().send().await.is_ok());
        let err = send().await.expect_err("bucket empty");
        assert_eq!(err.code(), Some("Throttling"));
        assert_eq!(err.message(), Some("Rate exceeded"));
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(send().await.is_ok(), "one token refilled after 100 ms");
        let stats = elb.stats();
        assert_eq!(
            (
                stats.describe_target_health,
                stats.describe_target_groups,
                stats.throttled
            ),
            (3, 1, 1)
        );
    }

    #[tokio::test]
    async fn sdk_retries_injected_throttling() {
        let elb = FakeElb::start().await.unwrap();
        let arn = target_group_arn("tg");
        elb.register(&arn, "10.0.0.1", 8080);
        let fault = ElbFault {
            action: Some("DescribeTargetHealth".into()),
            kind: ElbFaultKind::Throttling,
            times: 1,
        };
        elb.inject(fault);
        // Standard retry mode classifies `Throttling` as retryable and tries again.
        let retry = RetryConfig::standard()
            .with_max_attempts(2)
            .with_initial_backoff(Duration::from_millis(10));
        let c = client_with(&elb, retry);
        let got = health(&c, &arn, &[("10.0.0.1", 8080)]).await;
        assert_eq!(got[0].2, StateEnum::Healthy);
        let outcomes: Vec<String> = elb.requests().into_iter().map(|r| r.outcome).collect();
        assert_eq!(outcomes, ["Throttling", "ok"]);
    }

    #[tokio::test]
    async fn faults_apply_per_action_and_are_used_up() {
        let elb = FakeElb::start().await.unwrap();
        let arn = target_group_arn("tg");
        elb.add_target_group(&arn, "tg", 8080);
        let c = client(&elb);
        elb.inject(ElbFault {
            action: Some("DescribeTargetHealth".into()),
            kind: ElbFaultKind::InternalError,
            times: 1,
        });
        assert!(
            c.describe_target_groups().send().await.is_ok(),
            "other actions are unaffected"
        );
        let err = c
            .describe_target_health()
            .target_group_arn(&arn)
            .send()
            .await
            .expect_err("500");
        assert_eq!(err.code(), Some("InternalFailure"));
        assert!(
            c.describe_target_health()
                .target_group_arn(&arn)
                .send()
                .await
                .is_ok()
        );

        elb.inject(ElbFault {
            action: None,
            kind: ElbFaultKind::Hang,
            times: 1,
        });
        let timeouts = TimeoutConfig::builder()
            .operation_attempt_timeout(Duration::from_millis(200))
            .build();
        let impatient =
            elbv2::Client::from_conf(c.config().to_builder().timeout_config(timeouts).build());
        let err = impatient
            .describe_target_groups()
            .send()
            .await
            .expect_err("hang");
        assert!(
            matches!(err, elbv2::error::SdkError::TimeoutError(_)),
            "{err:?}"
        );
        assert_eq!(
            elb.requests().last().map(|r| r.outcome.clone()).as_deref(),
            Some("Hang")
        );
        assert!(c.describe_target_groups().send().await.is_ok());
    }

    #[tokio::test]
    async fn describe_target_groups_resolves_names() {
        let elb = FakeElb::start().await.unwrap();
        let arn = target_group_arn("k8s-argo-server");
        elb.add_target_group(&arn, "k8s-argo-server", 2746);
        elb.add_target_group(&target_group_arn("other"), "other", 80);
        let c = client(&elb);
        let out = c
            .describe_target_groups()
            .names("k8s-argo-server")
            .send()
            .await
            .unwrap();
        let groups = out.target_groups();
        assert_eq!(groups.len(), 1);
        assert_eq!(groups[0].target_group_arn(), Some(arn.as_str()));
        assert_eq!(groups[0].port(), Some(2746));
        assert_eq!(
            groups[0].target_type(),
            Some(&elbv2::types::TargetTypeEnum::Ip)
        );
        let by_arn = c
            .describe_target_groups()
            .target_group_arns(&arn)
            .send()
            .await
            .unwrap();
        assert_eq!(
            by_arn.target_groups()[0].target_group_name(),
            Some("k8s-argo-server")
        );
        assert_eq!(
            c.describe_target_groups()
                .send()
                .await
                .unwrap()
                .target_groups()
                .len(),
            2
        );
        assert_eq!(elb.requests()[0].names, ["k8s-argo-server"]);
    }

    #[tokio::test]
    async fn malformed_requests_get_4xx() {
        let elb = FakeElb::start().await.unwrap();
        let arn = target_group_arn("tg");
        elb.register(&arn, "10.0.0.1", 8080);
        let (status, body) = raw_post(&elb, "Version=2015-12-01").await;
        assert_eq!(status, 400);
        assert!(body.contains("<Code>MissingAction</Code>"), "{body}");
        let (status, body) = raw_post(&elb, "Action=DeleteTargetGroup&Version=2015-12-01").await;
        assert_eq!(status, 400);
        assert!(body.contains("<Code>InvalidAction</Code>"), "{body}");
        let bad_port = format!(
            "Action=DescribeTargetHealth&TargetGroupArn={arn}&Targets.member.1.Id=x&Targets.member.1.Port=abc"
        );
        let (status, body) = raw_post(&elb, &bad_port).await;
        assert_eq!(status, 400);
        assert!(body.contains("<Code>ValidationError</Code>"), "{body}");
        let (status, _) = raw_post(
            &elb,
            "Action=DescribeTargetHealth&%zz=%&&=&Targets.member.x.Id=1",
        )
        .await;
        assert_eq!(status, 400);
        // Percent-encoded ARN and id, in any member order.
        let enc = arn.replace(':', "%3A").replace('/', "%2F");
        let ok = format!(
            "Targets.member.1.Port=8080&Action=DescribeTargetHealth&TargetGroupArn={enc}&Targets.member.1.Id=10.0.0%2E1"
        );
        let (status, body) = raw_post(&elb, &ok).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.contains("<State>healthy</State>"), "{body}");
        assert_eq!(elb.stats().errors, 4);
    }

    #[test]
    fn form_decoding_and_escaping() {
        assert_eq!(percent_decode(b"a+b%20c%2x%"), "a b c%2x%");
        assert_eq!(
            parse_form(b"A=1&&B=&C"),
            [
                ("A".into(), "1".into()),
                ("B".into(), "".into()),
                ("C".into(), "".into())
            ]
        );
        assert_eq!(esc("<a&'\">"), "&lt;a&amp;&apos;&quot;&gt;");
        assert!(
            target_group_arn("x")
                .starts_with("arn:aws:elasticloadbalancing:us-east-1:123456789012:targetgroup/x/")
        );
    }
}
