//! `drainwait check`: would a drain work here, and if not, what to fix.
//!
//! The preconditions are checked in the order a drain needs them, each one
//! giving a [`Line`] (✓/✗, what was seen, a fix for a ✗):
//!
//! ```text
//! config ─▶ api ─▶ rbac (SelfSubjectAccessReview per rule and verb)
//!               └▶ pod ─▶ services (one EndpointSlice LIST) ─▶ bindings ─▶ targets (aws::discover)
//!                     │                                                      └▶ aws credentials ─▶ target state
//!                     └▶ deadline (grace period − reserve vs. the settles)
//! ```
//!
//! A step whose input is missing (no API, no pod) is left out rather than
//! reported twice. Every call runs under `DRAINWAIT_REQUEST_TIMEOUT`, so
//! check never hangs. The lines go to stdout as a table or, with
//! `--output json`, as one JSON list; logs stay on stderr. Exit 0 only when
//! every line is ✓, 1 otherwise, 2 for an invalid configuration.

use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use aws_config::{BehaviorVersion, Region};
use aws_credential_types::credential_feature::AwsCredentialFeature;
use aws_sdk_elasticloadbalancingv2::config::ProvideCredentials;
use aws_sdk_elasticloadbalancingv2::error::ProvideErrorMetadata;
use aws_sdk_elasticloadbalancingv2::types::TargetDescription;
use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SelfSubjectAccessReview, SelfSubjectAccessReviewSpec,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DynamicObject, ListParams, PostParams};
use serde::Serialize;
use tokio::sync::watch;
use tokio::time::{Instant, timeout};

use crate::aws::{self, Clients, Discovered, Target};
use crate::config::{LbMode, OutputFormat, Settings, TargetGroupArn, WaitArgs};
use crate::decision::{EndpointsView, MyEndpoint, my_endpoints, target_out};
use crate::endpoints;
use crate::k8s::{
    self, CallError, RULE_EVENTS, RULE_PODS, RULE_SERVICES, RULE_SLICES, RULE_TGB, Rule,
};
use crate::pod::{self, PodInfo};

/// The (ungranted, always allowed) rule a SelfSubjectAccessReview is created under.
const RULE_SSAR: Rule = Rule {
    group: "authorization.k8s.io",
    resource: "selfsubjectaccessreviews",
    verbs: &["create"],
};
/// Kubernetes' default `terminationGracePeriodSeconds`.
const DEFAULT_GRACE_SECS: i64 = 30;
const RBAC_FIX: &str =
    "to a Role bound to the pod's ServiceAccount (the drainwait chart grants it)";
const IAM_FIX: &str = "give the pod's ServiceAccount an IAM role (IRSA annotation eks.amazonaws.com/role-arn, or an EKS Pod Identity association) allowing elasticloadbalancing:DescribeTargetHealth and elasticloadbalancing:DescribeTargetGroups";

/// One checked precondition.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Line {
    /// What was checked, e.g. `rbac: get pods`.
    pub check: String,
    /// Whether it holds.
    pub ok: bool,
    /// What was seen.
    pub detail: String,
    /// What to do about a failure; `None` when `ok`.
    pub fix: Option<String>,
}

#[derive(Default)]
struct Report(Vec<Line>);

impl Report {
    fn ok(&mut self, check: impl Into<String>, detail: impl Into<String>) {
        self.0.push(Line {
            check: check.into(),
            ok: true,
            detail: detail.into(),
            fix: None,
        });
    }
    fn fail(
        &mut self,
        check: impl Into<String>,
        detail: impl Into<String>,
        fix: impl Into<String>,
    ) {
        self.0.push(Line {
            check: check.into(),
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        });
    }
}

/// Run every check, print the result in `output` format; returns the exit code.
pub async fn run(args: &WaitArgs, output: OutputFormat) -> u8 {
    let mut report = Report::default();
    let code = match Settings::from_args(args) {
        Err(e) => {
            report.fail(
                "config",
                e.to_string(),
                format!("set {} (--{}) to {}", e.var, e.flag, e.accepted),
            );
            2
        }
        Ok(settings) => {
            report.ok("config", describe_settings(&settings));
            checks(&settings, &mut report).await;
            u8::from(report.0.iter().any(|l| !l.ok))
        }
    };
    print!("{}", render(&report.0, output));
    code
}

/// The table (text) or the JSON list.
pub fn render(lines: &[Line], output: OutputFormat) -> String {
    if output == OutputFormat::Json {
        return serde_json::to_string_pretty(lines)
            .map(|s| s + "\n")
            .unwrap_or_default();
    }
    let width = lines
        .iter()
        .map(|l| l.check.chars().count())
        .max()
        .unwrap_or(0);
    let mut out = String::new();
    for l in lines {
        let mark = if l.ok { '✓' } else { '✗' };
        let _ = writeln!(out, "{mark} {:<width$}  {}", l.check, l.detail);
        if let Some(fix) = &l.fix {
            let _ = writeln!(out, "  {:<width$}  fix: {fix}", "");
        }
    }
    let failed = lines.iter().filter(|l| !l.ok).count();
    if failed == 0 {
        let _ = writeln!(
            out,
            "\nall {} checks passed: a drain would work",
            lines.len()
        );
    } else {
        let _ = writeln!(
            out,
            "\n{failed} of {} checks failed: a drain would fall back to DRAINWAIT_FALLBACK_WAIT or miss a signal",
            lines.len()
        );
    }
    out
}

fn describe_settings(s: &Settings) -> String {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let lb = match s.lb {
        LbMode::Auto => "auto",
        LbMode::Aws => "aws",
        LbMode::None => "none",
    };
    format!(
        "valid: LB {lb}, MAX_WAIT {}, SHUTDOWN_RESERVE {}, ENDPOINTS_SETTLE {}, LB_SETTLE {}, POLL_INTERVAL {}, FALLBACK_WAIT {}, REQUEST_TIMEOUT {}",
        d(s.max_wait),
        d(s.shutdown_reserve),
        d(s.endpoints_settle),
        d(s.lb_settle),
        d(s.poll_interval),
        d(s.fallback_wait),
        d(s.request_timeout)
    )
}

/// The RBAC rules a drain with these settings uses (SPEC "Least privilege").
fn rules(s: &Settings) -> Vec<Rule> {
    let mut rules = vec![RULE_PODS, RULE_SERVICES, RULE_SLICES];
    if s.events {
        rules.push(RULE_EVENTS);
    }
    if s.lb != LbMode::None {
        rules.push(RULE_TGB);
    }
    rules
}

/// What a failed API call saw; a 403's rule goes into the fix, not here too.
fn call_detail(e: &CallError) -> String {
    match e {
        CallError::Forbidden { message, .. } => format!("forbidden: {message}"),
        other => other.to_string(),
    }
}

/// What to do about a failed API call: a grant for a 403, else the API's reachability.
fn call_fix(e: &CallError, rule: &Rule) -> String {
    match e {
        CallError::Forbidden { .. } => format!("add the RBAC rule {rule} {RBAC_FIX}"),
        _ => "check that the API server answers in time from the pod (network, API server load), or raise DRAINWAIT_REQUEST_TIMEOUT".into(),
    }
}

fn qualified(rule: &Rule) -> String {
    match rule.group {
        "" => rule.resource.to_string(),
        g => format!("{g}/{}", rule.resource),
    }
}

async fn checks(s: &Settings, r: &mut Report) {
    let t = s.request_timeout;
    let name = pod::resolve_name(s.pod_name.as_deref(), |k| std::env::var(k).ok());

    let (client, kube_ns) = match timeout(t, k8s::client(t)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            return r.fail(
                "api",
                e,
                "run check inside the pod (with its ServiceAccount), or set KUBECONFIG",
            );
        }
        Err(_) => {
            return r.fail(
                "api",
                "no Kubernetes configuration within the request timeout",
                "check KUBECONFIG and its credential plugin",
            );
        }
    };
    match timeout(t, client.apiserver_version()).await {
        Ok(Ok(v)) => r.ok(
            "api",
            format!("the API server answers (Kubernetes {})", v.git_version),
        ),
        Ok(Err(e)) => {
            let fix = "check that the API server is reachable from the pod (NetworkPolicy egress, proxy) and that the credentials are valid";
            return r.fail(
                "api",
                format!("cannot reach the API server: {}", k8s::message(&e)),
                fix,
            );
        }
        Err(_) => {
            let detail = format!(
                "the API server did not answer within {}",
                humantime::format_duration(t)
            );
            return r.fail(
                "api",
                detail,
                "check the network path to the API server, or raise DRAINWAIT_REQUEST_TIMEOUT",
            );
        }
    }
    let sa_ns = std::fs::read_to_string(pod::SA_NAMESPACE_FILE).ok();
    let namespace = pod::resolve_namespace(
        s.pod_namespace.as_deref(),
        |k| std::env::var(k).ok(),
        sa_ns,
        &kube_ns,
    );

    for rule in rules(s) {
        for verb in rule.verbs {
            access_review(&client, &namespace, &rule, verb, t, r).await;
        }
    }

    let Some(name) = name else {
        let fix = "set DRAINWAIT_POD_NAME (or POD_NAME) from the downward API (fieldRef metadata.name), or pass --pod-name";
        return r.fail("pod", "cannot tell which pod this is", fix);
    };
    let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
    let pod = match k8s::call(RULE_PODS, t, Instant::now() + t, || pods.get(&name)).await {
        Ok(p) => p,
        Err(CallError::NotFound(_)) => {
            let fix = "set DRAINWAIT_POD_NAME and DRAINWAIT_POD_NAMESPACE from the downward API (metadata.name, metadata.namespace), or pass --pod-name and --pod-namespace";
            return r.fail("pod", format!("no pod {namespace}/{name}"), fix);
        }
        Err(e) => {
            return r.fail(
                "pod",
                format!("cannot read pod {namespace}/{name}: {}", call_detail(&e)),
                call_fix(&e, &RULE_PODS),
            );
        }
    };
    let info = PodInfo::from_pod(&pod, &namespace);
    r.ok("pod", describe_pod(&info, &pod));

    let Some(mine) = services(&client, s, &info, r).await else {
        return;
    };
    let targets = if s.lb == LbMode::None {
        r.ok("load balancer", "DRAINWAIT_LB=none: no load balancer gate");
        Vec::new()
    } else if bindings(&client, s, &namespace, &mine, r).await {
        discover(&client, s, &info, &mine, r).await
    } else {
        Vec::new()
    };
    if !targets.is_empty() && credentials(s, &targets, r).await {
        target_states(s, &targets, r).await;
    }
    deadline(s, &pod, &info, !targets.is_empty(), r);
}

async fn access_review(
    client: &kube::Client,
    namespace: &str,
    rule: &Rule,
    verb: &str,
    t: Duration,
    r: &mut Report,
) {
    let check = format!("rbac: {verb} {}", qualified(rule));
    let review = SelfSubjectAccessReview {
        spec: SelfSubjectAccessReviewSpec {
            resource_attributes: Some(ResourceAttributes {
                namespace: Some(namespace.to_string()),
                verb: Some(verb.to_string()),
                group: Some(rule.group.to_string()),
                resource: Some(rule.resource.to_string()),
                ..Default::default()
            }),
            ..Default::default()
        },
        ..Default::default()
    };
    let api: Api<SelfSubjectAccessReview> = Api::all(client.clone());
    let pp = PostParams::default();
    let fix = format!("add the RBAC rule {rule} {RBAC_FIX}");
    match k8s::call(RULE_SSAR, t, Instant::now() + t, || {
        api.create(&pp, &review)
    })
    .await
    {
        Ok(answer) => {
            let status = answer.status.unwrap_or_default();
            let why = status
                .reason
                .filter(|s| !s.is_empty())
                .or(status.evaluation_error)
                .unwrap_or_default();
            if status.allowed {
                r.ok(check, format!("allowed in namespace {namespace}"));
            } else if why.is_empty() {
                r.fail(check, format!("denied in namespace {namespace}"), fix);
            } else {
                r.fail(
                    check,
                    format!("denied in namespace {namespace}: {why}"),
                    fix,
                );
            }
        }
        Err(e) => r.fail(
            check,
            format!("cannot ask the API server (SelfSubjectAccessReview): {e}"),
            "check that the API server is reachable; SelfSubjectAccessReview needs no grant",
        ),
    }
}

fn describe_pod(info: &PodInfo, pod: &Pod) -> String {
    let ips = if info.me.ips.is_empty() {
        "no IP yet".to_string()
    } else {
        info.me.ips.join(",")
    };
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "unknown phase".into());
    let state = match (info.deletion, info.grace) {
        (Some(at), Some(g)) => format!("being deleted (deletionTimestamp {at}, grace {g}s)"),
        (Some(at), None) => format!("being deleted (deletionTimestamp {at})"),
        (None, _) => "not being deleted".into(),
    };
    format!(
        "{}/{} found: {phase}, IP {ips}, {state}",
        info.namespace, info.me.name
    )
}

/// One LIST of the EndpointSlices: which Services list this pod, and is it in rotation.
async fn services(
    client: &kube::Client,
    s: &Settings,
    info: &PodInfo,
    r: &mut Report,
) -> Option<Vec<MyEndpoint>> {
    let t = s.request_timeout;
    let api: Api<EndpointSlice> = Api::namespaced(client.clone(), &info.namespace);
    let mut lp = ListParams::default();
    if let Some(sel) = endpoints::selector(&s.services) {
        lp = lp.labels(&sel);
    }
    let list = match k8s::call(RULE_SLICES, t, Instant::now() + t, || api.list(&lp)).await {
        Ok(l) => l,
        Err(e) => {
            r.fail(
                "services",
                format!("cannot list EndpointSlices: {}", call_detail(&e)),
                call_fix(&e, &RULE_SLICES),
            );
            return None;
        }
    };
    let mine = my_endpoints(list.items.iter(), &info.me);
    let view = EndpointsView::of(&mine);
    let missing: Vec<&str> = s
        .services
        .iter()
        .map(String::as_str)
        .filter(|n| !view.services.contains(*n))
        .collect();
    let listed: Vec<String> = view
        .services
        .iter()
        .map(|svc| {
            let state = if view.in_rotation_via.contains(svc) {
                "in rotation"
            } else {
                "out of rotation"
            };
            format!("{svc} ({state})")
        })
        .collect();
    if !missing.is_empty() {
        let detail = format!(
            "DRAINWAIT_SERVICES names {} but no EndpointSlice of it lists this pod",
            missing.join(",")
        );
        r.fail("services", detail, "correct DRAINWAIT_SERVICES, or unset it to use every Service whose EndpointSlices list the pod");
    } else if listed.is_empty() {
        r.ok("services", "no Service's EndpointSlice lists this pod: the endpoints gate passes at once (is the pod Ready and selected by a Service?)");
    } else {
        r.ok(
            "services",
            format!("EndpointSlices list this pod for {}", listed.join(", ")),
        );
    }
    Some(mine)
}

/// One line per TargetGroupBinding in the namespace: used, skipped (instance), or not this pod's.
/// `false` when they cannot be listed.
async fn bindings(
    client: &kube::Client,
    s: &Settings,
    namespace: &str,
    mine: &[MyEndpoint],
    r: &mut Report,
) -> bool {
    let t = s.request_timeout;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), namespace, &aws::tgb_resource());
    let lp = ListParams::default();
    let list = match k8s::call(RULE_TGB, t, Instant::now() + t, || api.list(&lp)).await {
        Ok(l) => l.items,
        Err(CallError::NotFound(_)) => {
            r.ok(
                "bindings",
                "no TargetGroupBinding CRD (no AWS Load Balancer Controller): no bindings",
            );
            return true;
        }
        Err(e) => {
            let fix = format!(
                "{}, or set DRAINWAIT_LB=none if no AWS load balancer targets this pod",
                call_fix(&e, &RULE_TGB)
            );
            r.fail(
                "bindings",
                format!("cannot list TargetGroupBindings: {}", call_detail(&e)),
                fix,
            );
            return false;
        }
    };
    if list.is_empty() {
        r.ok(
            "bindings",
            format!("no TargetGroupBinding in namespace {namespace}"),
        );
        return true;
    }
    for b in list.iter().map(aws::Binding::from_object) {
        let (name, svc, port) = (&b.name, &b.service, b.port_text());
        let kind = b.target_type.as_deref().unwrap_or("ip (targetType unset)");
        let group = match (&b.arn, &b.group_name) {
            (Some(arn), _) => short_tg(arn).to_string(),
            (None, Some(n)) => format!("name {n}"),
            (None, None) => "no target group".into(),
        };
        let check = format!("binding {name}");
        if !mine.iter().any(|e| &e.service == svc) {
            r.ok(
                check,
                format!("Service {svc}:{port} does not list this pod: not used"),
            );
        } else if b.is_instance() {
            r.ok(check, format!("instance targets for Service {svc}:{port}: skipped, the nodes are the targets (the endpoints gate and kube-proxy cover them)"));
        } else {
            r.ok(
                check,
                format!("{kind} targets for Service {svc}:{port} in target group {group}"),
            );
        }
    }
    true
}

/// `aws::discover` with the EndpointSlices just listed: the targets a drain would poll.
async fn discover(
    client: &kube::Client,
    s: &Settings,
    info: &PodInfo,
    mine: &[MyEndpoint],
    r: &mut Report,
) -> Vec<Target> {
    let t = s.request_timeout;
    // The sender stays alive in this frame: discover sees the view as already synced.
    let (_tx, rx) = watch::channel(Some(Arc::new(mine.to_vec())));
    let mut elb = Clients::new(t);
    // Several calls at most (list, Service GET, DescribeTargetGroups), each under `t`.
    let until = Instant::now() + t * 3;
    let fix = "fix the TargetGroupBinding, or set DRAINWAIT_AWS_TARGET_GROUP_ARNS and DRAINWAIT_AWS_TARGET_PORT, or DRAINWAIT_LB=none when no AWS load balancer targets this pod";
    match timeout(t * 4, aws::discover(client, info, s, rx, until, &mut elb)).await {
        Ok(Ok(Discovered::Nothing(why))) => {
            r.ok(
                "targets",
                format!("no load balancer targets to wait for: {why}"),
            );
            Vec::new()
        }
        Ok(Ok(Discovered::Targets(targets))) => {
            let list: Vec<String> = targets
                .iter()
                .map(|t| format!("{}:{} in {}", t.id, t.port, short_tg(&t.arn)))
                .collect();
            r.ok(
                "targets",
                format!("a drain would wait for {}", list.join(", ")),
            );
            targets
        }
        Ok(Err(e)) => {
            r.fail("targets", e, fix);
            Vec::new()
        }
        Err(_) => {
            r.fail(
                "targets",
                "target discovery did not finish within the request timeouts",
                fix,
            );
            Vec::new()
        }
    }
}

/// `targetgroup/NAME/ID` of an ARN → `NAME`.
fn short_tg(arn: &str) -> &str {
    arn.rsplit_once(":targetgroup/")
        .and_then(|(_, rest)| rest.split('/').next())
        .unwrap_or(arn)
}

/// The region a drain's calls would use: `AWS_REGION`, else the first target group's.
fn region_for(targets: &[Target]) -> Option<String> {
    std::env::var("AWS_REGION")
        .ok()
        .filter(|r| !r.is_empty())
        .or_else(|| {
            targets
                .first()
                .and_then(|t| t.arn.parse::<TargetGroupArn>().ok())
                .map(|a| a.region().to_string())
        })
}

/// Which provider of aws-config's default chain answered, from the features it recorded.
fn credential_source(features: &[AwsCredentialFeature]) -> &'static str {
    use AwsCredentialFeature as F;
    let has = |f: &F| features.contains(f);
    if [
        F::CredentialsStsAssumeRoleWebId,
        F::CredentialsEnvVarsStsWebIdToken,
        F::CredentialsProfileStsWebIdToken,
    ]
    .iter()
    .any(has)
    {
        "web identity token (IRSA: AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE)"
    } else if has(&F::CredentialsHttp) {
        "container credentials endpoint (EKS Pod Identity or ECS)"
    } else if has(&F::CredentialsImds) {
        "EC2 instance metadata (IMDS): the node's role, shared by every pod on the node"
    } else if has(&F::CredentialsEnvVars) {
        "environment variables (AWS_ACCESS_KEY_ID)"
    } else if [
        F::CredentialsSso,
        F::CredentialsProfileSso,
        F::CredentialsProcess,
        F::CredentialsProfileProcess,
    ]
    .iter()
    .any(has)
        || features
            .iter()
            .any(|f| format!("{f:?}").starts_with("CredentialsProfile"))
    {
        "shared config profile (~/.aws)"
    } else {
        "aws-config's default chain (provider not reported)"
    }
}

/// Which provider of the default chain gives credentials; `false` when none does.
async fn credentials(s: &Settings, targets: &[Target], r: &mut Report) -> bool {
    let t = s.request_timeout;
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(aws::https_client())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .connect_timeout(t)
                .operation_attempt_timeout(t)
                .build(),
        );
    if let Some(region) = region_for(targets) {
        loader = loader.region(Region::new(region));
    }
    let fix = IAM_FIX;
    let Ok(conf) = timeout(t, loader.load()).await else {
        r.fail(
            "aws credentials",
            "loading the AWS configuration took longer than the request timeout",
            fix,
        );
        return false;
    };
    let Some(provider) = conf.credentials_provider() else {
        r.fail("aws credentials", "no credentials provider configured", fix);
        return false;
    };
    match timeout(t, provider.provide_credentials()).await {
        Ok(Ok(creds)) => {
            let features = creds
                .get_property::<Vec<AwsCredentialFeature>>()
                .cloned()
                .unwrap_or_default();
            // The source only: never a key, token or secret.
            r.ok(
                "aws credentials",
                format!("from {}", credential_source(&features)),
            );
            true
        }
        Ok(Err(e)) => {
            r.fail(
                "aws credentials",
                format!(
                    "no provider of the default chain gave credentials: {}",
                    error_text(&e)
                ),
                fix,
            );
            false
        }
        Err(_) => {
            r.fail(
                "aws credentials",
                format!("no credentials within {}", humantime::format_duration(t)),
                fix,
            );
            false
        }
    }
}

/// An error and its sources on one line (no Debug dumps: they are long and may carry request details).
fn error_text(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let next = s.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = s.source();
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `Code: message` of an AWS answer, else what kept the request from getting one.
fn sdk_error_text<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &aws_sdk_elasticloadbalancingv2::error::SdkError<E, R>,
) -> String {
    match (e.code(), e.message()) {
        (Some(code), Some(msg)) => format!("{code}: {msg}"),
        (Some(code), None) => code.to_string(),
        _ => error_text(e),
    }
}

/// DescribeTargetHealth for each target alone: its state now, and whether a drain sees it as out.
async fn target_states(s: &Settings, targets: &[Target], r: &mut Report) {
    let t = s.request_timeout;
    let mut elb = Clients::new(t);
    for target in targets {
        let check = format!(
            "target {}:{} in {}",
            target.id,
            target.port,
            short_tg(&target.arn)
        );
        let client = elb.for_arn(&target.arn).await;
        let desc = TargetDescription::builder()
            .id(&target.id)
            .port(i32::from(target.port))
            .build();
        let call = client
            .describe_target_health()
            .target_group_arn(&target.arn)
            .targets(desc)
            .send();
        let out = match timeout(t, call).await {
            Err(_) => {
                r.fail(check, format!("DescribeTargetHealth got no answer within {}", humantime::format_duration(t)), "check the network path to the ELBv2 endpoint (and AWS_ENDPOINT_URL_ELASTIC_LOAD_BALANCING_V2), or raise DRAINWAIT_REQUEST_TIMEOUT");
                continue;
            }
            Ok(Ok(out)) => out,
            Ok(Err(e)) => {
                let msg = sdk_error_text(&e);
                let fix = match e.code().unwrap_or_default() {
                    "InvalidTarget" => {
                        r.ok(
                            check,
                            "not a registered target (InvalidTarget): a drain counts it as out",
                        );
                        continue;
                    }
                    "TargetGroupNotFound" => {
                        "fix the TargetGroupBinding's target group or DRAINWAIT_AWS_TARGET_GROUP_ARNS, and check AWS_REGION (the ARN's region is used otherwise)"
                    }
                    "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => IAM_FIX,
                    c if crate::metrics::is_throttle_code(c) => {
                        "the account's Describe* rate limit is exhausted now; try again (a drain backs off by itself)"
                    }
                    _ => "see the error; check AWS credentials, region and endpoint",
                };
                r.fail(check, format!("DescribeTargetHealth failed: {msg}"), fix);
                continue;
            }
        };
        let health = out
            .target_health_descriptions()
            .iter()
            .find(|d| d.target().and_then(|x| x.id()) == Some(target.id.as_str()))
            .and_then(|d| d.target_health());
        let (state, reason) = match health {
            Some(h) => (
                h.state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| "unknown".into()),
                h.reason().map(|r| r.as_str().to_string()),
            ),
            None => ("unknown".to_string(), None),
        };
        let shown = match &reason {
            Some(why) => format!("{state} ({why})"),
            None => state.clone(),
        };
        if target_out(&state, reason.as_deref()) {
            r.ok(check, format!("{shown}: already out of rotation"));
        } else {
            r.ok(
                check,
                format!("{shown}: in rotation now; a drain waits until it is draining"),
            );
        }
    }
}

/// Does the grace period leave room for the settles? SPEC: deadline = min(start + MAX_WAIT, deletion − reserve).
fn deadline(s: &Settings, pod: &Pod, info: &PodInfo, lb: bool, r: &mut Report) {
    let d = |d: Duration| humantime::format_duration(d).to_string();
    let (grace, source) = match (info.deletion, info.grace) {
        (Some(_), Some(g)) => (g, "deletionGracePeriodSeconds"),
        _ => match pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
        {
            Some(g) => (g, "spec.terminationGracePeriodSeconds"),
            None => (
                DEFAULT_GRACE_SECS,
                "the default terminationGracePeriodSeconds",
            ),
        },
    };
    let grace_d = Duration::from_secs(u64::try_from(grace).unwrap_or(0));
    let by_grace = grace_d.saturating_sub(s.shutdown_reserve);
    let budget = by_grace.min(s.max_wait);
    let mut need = s.endpoints_settle + s.poll_interval;
    let mut parts = format!(
        "ENDPOINTS_SETTLE {} + POLL_INTERVAL {}",
        d(s.endpoints_settle),
        d(s.poll_interval)
    );
    if lb {
        need += s.lb_settle;
        let _ = write!(parts, " + LB_SETTLE {}", d(s.lb_settle));
    }
    let detail = format!(
        "grace {grace}s ({source}) − SHUTDOWN_RESERVE {} = {}, MAX_WAIT {}: a drain gets {}; it needs at least {parts} = {} after the pod leaves rotation",
        d(s.shutdown_reserve),
        d(by_grace),
        d(s.max_wait),
        d(budget),
        d(need)
    );
    if need < budget {
        return r.ok("deadline", detail);
    }
    // Room for the settles plus the LB controller's deregistration (seconds to tens of seconds).
    let want = need + s.shutdown_reserve + Duration::from_secs(30);
    let mut fix = String::new();
    if by_grace <= need {
        let _ = write!(
            fix,
            "raise terminationGracePeriodSeconds to at least {}s",
            want.as_secs()
        );
    }
    if s.max_wait <= need {
        if !fix.is_empty() {
            fix.push_str(" and ");
        }
        let _ = write!(fix, "raise DRAINWAIT_MAX_WAIT above {}", d(need));
    }
    fix.push_str(", or shorten the settles");
    r.fail("deadline", detail, fix);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(check: &str, ok: bool) -> Line {
        Line {
            check: check.into(),
            ok,
            detail: "seen".into(),
            fix: (!ok).then(|| "do this".into()),
        }
    }

    #[test]
    fn table_marks_lines_and_indents_fixes() {
        let text = render(
            &[line("config", true), line("rbac: get pods", false)],
            OutputFormat::Text,
        );
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows[0], "✓ config          seen");
        assert_eq!(rows[1], "✗ rbac: get pods  seen");
        assert_eq!(rows[2], "                  fix: do this");
        assert!(text.contains("1 of 2 checks failed"), "{text}");
    }

    #[test]
    fn json_is_one_list() {
        let json = render(&[line("config", true)], OutputFormat::Json);
        let v: serde_json::Value = serde_json::from_str(&json).expect("json");
        assert_eq!(
            v,
            serde_json::json!([{"check": "config", "ok": true, "detail": "seen", "fix": null}])
        );
    }

    #[test]
    fn credential_sources_are_named() {
        use AwsCredentialFeature as F;
        assert!(credential_source(&[F::CredentialsEnvVars]).starts_with("environment"));
        assert!(credential_source(&[F::CredentialsProfileStsWebIdToken]).contains("IRSA"));
        assert!(credential_source(&[F::CredentialsHttp]).contains("Pod Identity"));
        assert!(credential_source(&[F::CredentialsImds]).contains("IMDS"));
        assert!(credential_source(&[]).contains("default chain"));
    }

    #[test]
    fn output_flag_parses() {
        use clap::Parser;

        use crate::config::{Cli, Command};
        let output = |argv: &[&str]| match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Some(Command::Check(a))) => Some(a.output),
            _ => None,
        };
        assert_eq!(output(&["drainwait", "check"]), Some(OutputFormat::Text));
        assert_eq!(
            output(&["drainwait", "check", "--output", "json"]),
            Some(OutputFormat::Json)
        );
        assert_eq!(
            output(&["drainwait", "check", "-o", "json", "--lb", "none"]),
            Some(OutputFormat::Json)
        );
        assert_eq!(output(&["drainwait", "check", "--output", "yaml"]), None);
    }

    #[test]
    fn short_target_group_names() {
        assert_eq!(
            short_tg("arn:aws:elasticloadbalancing:us-east-1:1:targetgroup/argo/abc"),
            "argo"
        );
        assert_eq!(short_tg("odd"), "odd");
    }
}
