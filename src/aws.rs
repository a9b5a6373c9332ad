//! The aws gate: are this pod's ELBv2 targets draining or deregistered?
//!
//! Two phases. **Discovery** ([`discover`]): TargetGroupBindings in the
//! namespace whose `serviceRef.name` is one of the pod's Services give
//! `ip` targets (pod IP, pod port resolved from `serviceRef.port` through the
//! Service and the EndpointSlice ports); `instance` bindings are skipped
//! (nodes are the targets); `targetGroupName` is resolved with
//! DescribeTargetGroups; explicit ARNs are added. **Polling** ([`poll`]):
//! DescribeTargetHealth for exactly those targets, jittered, backing off on
//! Throttling, until every target is out ([`crate::decision::target_out`]);
//! then the LB settle. An InvalidTarget answer to a multi-target call is
//! re-asked per target. Unreadable signals come back as `Err(reason)`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_sdk_elasticloadbalancingv2 as elbv2;
use aws_smithy_types::error::display::DisplayErrorContext;
use elbv2::error::{ProvideErrorMetadata, SdkError};
use elbv2::types::TargetDescription;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use tokio::time::{Instant, sleep_until, timeout};

use crate::config::{LbMode, Settings, TargetGroupArn};
use crate::decision::{
    MyEndpoint, Settle, TargetState, TargetStates, all_targets_out, only_pod_port, pod_port,
};
use crate::endpoints::SharedEndpoints;
use crate::k8s::{self, CallError, RULE_SERVICES, RULE_TGB};
use crate::pod::PodInfo;
use crate::report::Progress;

/// One target to watch.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Target {
    /// Target group ARN.
    pub arn: String,
    /// Target id: the pod IP.
    pub id: String,
    /// Target port: the pod port.
    pub port: u16,
}

/// What discovery found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Discovered {
    /// No target applies (auto mode), with the reason.
    Nothing(String),
    /// Targets to poll.
    Targets(Vec<Target>),
}

/// The fields of a TargetGroupBinding's spec that drainwait reads.
#[derive(Debug, Clone, PartialEq)]
pub struct Binding {
    /// `metadata.name`.
    pub name: String,
    /// `spec.serviceRef.name`.
    pub service: String,
    /// `spec.serviceRef.port`: a Service port number or name.
    pub port: serde_json::Value,
    /// `spec.targetType`; unset means the controller infers it from the target group.
    pub target_type: Option<String>,
    /// `spec.targetGroupARN`, when set and not empty.
    pub arn: Option<String>,
    /// `spec.targetGroupName`, the alternative to the ARN.
    pub group_name: Option<String>,
    /// `spec.ipAddressType` is `ipv6`.
    pub ipv6: bool,
}

impl Binding {
    /// Read the spec of a TargetGroupBinding object; missing fields are empty.
    pub fn from_object(o: &DynamicObject) -> Binding {
        let spec = o.data.get("spec").cloned().unwrap_or_default();
        let text = |ptr: &str| {
            spec.pointer(ptr)
                .and_then(|v| v.as_str())
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        Binding {
            name: o.metadata.name.clone().unwrap_or_default(),
            service: text("/serviceRef/name").unwrap_or_default(),
            port: spec
                .pointer("/serviceRef/port")
                .cloned()
                .unwrap_or_default(),
            target_type: text("/targetType"),
            arn: text("/targetGroupARN"),
            group_name: text("/targetGroupName"),
            ipv6: text("/ipAddressType").as_deref() == Some("ipv6"),
        }
    }

    /// Instance targets are the nodes, not the pod: drainwait skips them. An
    /// unset type is treated as `ip`; were the group really instance-typed,
    /// DescribeTargetHealth answers the pod's IP as an invalid target.
    pub fn is_instance(&self) -> bool {
        self.target_type.as_deref() == Some("instance")
    }

    /// `serviceRef.port` as written, without JSON quotes.
    pub fn port_text(&self) -> String {
        match &self.port {
            serde_json::Value::String(s) => s.clone(),
            v => v.to_string(),
        }
    }
}

/// The TargetGroupBinding custom resource.
pub fn tgb_resource() -> ApiResource {
    ApiResource {
        group: "elbv2.k8s.aws".into(),
        version: "v1beta1".into(),
        api_version: "elbv2.k8s.aws/v1beta1".into(),
        kind: "TargetGroupBinding".into(),
        plural: "targetgroupbindings".into(),
    }
}

/// Find the targets of this pod (see the module header).
pub async fn discover(
    client: &kube::Client,
    pod: &PodInfo,
    settings: &Settings,
    mut endpoints: SharedEndpoints,
    until: Instant,
    elb: &mut Clients,
) -> Result<Discovered, String> {
    let t = settings.request_timeout;
    let tgbs: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &pod.namespace, &tgb_resource());
    let lp = ListParams::default();
    let bindings = match k8s::call(RULE_TGB, t, until, || tgbs.list(&lp)).await {
        Ok(list) => list.items,
        // No CRD: no AWS Load Balancer Controller here, so no bindings.
        Err(CallError::NotFound(_)) => Vec::new(),
        Err(e @ CallError::Forbidden { .. }) if settings.lb == LbMode::Auto => {
            return Err(format!(
                "{e}, or set DRAINWAIT_LB=none if no AWS load balancer targets this pod"
            ));
        }
        Err(e) => return Err(format!("cannot list TargetGroupBindings: {e}")),
    };
    let explicit = &settings.aws_target_group_arns;
    if bindings.is_empty() && explicit.is_empty() {
        return nothing(
            settings,
            "no TargetGroupBinding in the namespace and no DRAINWAIT_AWS_TARGET_GROUP_ARNS",
        );
    }

    // The pod's Services and ports, from the endpoints gate's first synced view.
    let mine: Vec<MyEndpoint> = if explicit.is_empty()
        || settings.aws_target_port.is_none()
        || !bindings.is_empty()
    {
        match timeout(until.saturating_duration_since(Instant::now()), endpoints.wait_for(Option::is_some)).await {
            Ok(Ok(v)) => v.as_deref().cloned().unwrap_or_default(),
            Ok(Err(_)) => return Err("the pod's Services are unknown because EndpointSlices could not be read (see the endpoints gate)".into()),
            Err(_) => return Err("the pod's Services are still unknown: EndpointSlices were not listed in time".into()),
        }
    } else {
        Vec::new()
    };
    let services: BTreeSet<&str> = mine.iter().map(|e| e.service.as_str()).collect();

    let mut targets = BTreeSet::new();
    for b in bindings.iter().map(Binding::from_object) {
        let name = &b.name;
        if !services.contains(b.service.as_str()) {
            continue;
        }
        if b.is_instance() {
            tracing::info!(binding = %name, "TargetGroupBinding {name} uses instance targets: the nodes are the targets, not this pod; the endpoints gate and kube-proxy cover it");
            continue;
        }
        let port_ref = &b.port;
        let port_name =
            service_port_name(client, &pod.namespace, &b.service, port_ref, t, until).await?;
        let port = pod_port(&mine, &b.service, &port_name).map_err(|e| {
            format!("TargetGroupBinding {name}: cannot resolve serviceRef.port {port_ref} to a pod port: {e}; set DRAINWAIT_AWS_TARGET_GROUP_ARNS and DRAINWAIT_AWS_TARGET_PORT instead")
        })?;
        let arn = match (&b.arn, &b.group_name) {
            (Some(arn), _) => arn.clone(),
            (None, Some(tg_name)) => elb
                .arn_for_name(tg_name, t)
                .await
                .map_err(|e| format!("TargetGroupBinding {name}: {e}"))?,
            (None, None) => {
                return Err(format!(
                    "TargetGroupBinding {name} has neither spec.targetGroupARN nor spec.targetGroupName"
                ));
            }
        };
        let ipv6 = b.ipv6;
        let ip = pod.ip(ipv6).ok_or_else(|| {
            format!(
                "TargetGroupBinding {name} wants an {} target but the pod has no such IP",
                if ipv6 { "IPv6" } else { "IPv4" }
            )
        })?;
        targets.insert(Target {
            arn,
            id: ip.to_string(),
            port,
        });
    }
    if !explicit.is_empty() {
        let port = match settings.aws_target_port {
            Some(p) => p,
            None => only_pod_port(&mine).map_err(|e| {
                format!("cannot choose the target port for DRAINWAIT_AWS_TARGET_GROUP_ARNS: {e}; set DRAINWAIT_AWS_TARGET_PORT")
            })?,
        };
        let ip = pod
            .ip(false)
            .or_else(|| pod.ip(true))
            .ok_or("the pod has no IP yet")?;
        for arn in explicit {
            targets.insert(Target {
                arn: arn.to_string(),
                id: ip.to_string(),
                port,
            });
        }
    }
    if targets.is_empty() {
        return nothing(
            settings,
            &format!(
                "no ip-type TargetGroupBinding references this pod's Services ({})",
                services.iter().copied().collect::<Vec<_>>().join(",")
            ),
        );
    }
    Ok(Discovered::Targets(targets.into_iter().collect()))
}

fn nothing(settings: &Settings, why: &str) -> Result<Discovered, String> {
    match settings.lb {
        LbMode::Aws => Err(format!(
            "DRAINWAIT_LB=aws but {why}; set DRAINWAIT_AWS_TARGET_GROUP_ARNS (and DRAINWAIT_AWS_TARGET_PORT), or create a TargetGroupBinding for the pod's Service"
        )),
        _ => Ok(Discovered::Nothing(why.to_string())),
    }
}

/// The Service port *name* a `serviceRef.port` (number or name) means.
async fn service_port_name(
    client: &kube::Client,
    ns: &str,
    svc: &str,
    port_ref: &serde_json::Value,
    t: Duration,
    until: Instant,
) -> Result<String, String> {
    if let Some(name) = port_ref.as_str()
        && name.parse::<u16>().is_err()
    {
        return Ok(name.to_string());
    }
    let number = port_ref
        .as_i64()
        .or_else(|| port_ref.as_str().and_then(|s| s.parse().ok()))
        .ok_or_else(|| {
            format!("serviceRef.port {port_ref} of Service {svc} is neither a number nor a name")
        })?;
    let api: Api<Service> = Api::namespaced(client.clone(), ns);
    let service = k8s::call(RULE_SERVICES, t, until, || api.get(svc))
        .await
        .map_err(|e| format!("cannot read Service {svc}: {e}"))?;
    let ports = service.spec.and_then(|s| s.ports).unwrap_or_default();
    ports
        .iter()
        .find(|p| i64::from(p.port) == number)
        .map(|p| p.name.clone().unwrap_or_default())
        .ok_or_else(|| {
            format!(
                "Service {svc} has no port {number} (serviceRef.port of its TargetGroupBinding)"
            )
        })
}

/// ELBv2 clients, one per region, built lazily.
pub struct Clients {
    timeout: Duration,
    by_region: BTreeMap<String, elbv2::Client>,
    default: Option<SdkConfig>,
}

impl Clients {
    /// No client built yet.
    pub fn new(timeout: Duration) -> Clients {
        Clients {
            timeout,
            by_region: BTreeMap::new(),
            default: None,
        }
    }

    async fn load(&self, region: Option<Region>) -> SdkConfig {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(https_client())
            // We retry ourselves, inside the deadline, with our own back-off.
            .retry_config(aws_config::retry::RetryConfig::disabled())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .connect_timeout(self.timeout)
                    .operation_attempt_timeout(self.timeout)
                    .build(),
            );
        if let Some(r) = region {
            loader = loader.region(r);
        }
        loader.load().await
    }

    /// The client for a target group ARN's region (`AWS_REGION` wins).
    pub async fn for_arn(&mut self, arn: &str) -> elbv2::Client {
        let region = std::env::var("AWS_REGION")
            .ok()
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| {
                arn.parse::<TargetGroupArn>()
                    .map(|a| a.region().to_string())
                    .unwrap_or_default()
            });
        if let Some(c) = self.by_region.get(&region) {
            return c.clone();
        }
        let conf = self.load(Some(Region::new(region.clone()))).await;
        let client = elbv2::Client::new(&conf);
        self.by_region.insert(region, client.clone());
        client
    }

    /// Resolve a target group name with DescribeTargetGroups in the SDK's default region.
    pub async fn arn_for_name(&mut self, name: &str, t: Duration) -> Result<String, String> {
        if self.default.is_none() {
            // The region chain may ask IMDS: bounded like any other request.
            let loaded = timeout(t, self.load(None)).await.map_err(|_| {
                format!(
                    "the AWS region chain gave no answer within {}: set AWS_REGION",
                    humantime::format_duration(t)
                )
            })?;
            self.default = Some(loaded);
        }
        let conf = self.default.as_ref().ok_or("no AWS configuration")?;
        if conf.region().is_none() {
            return Err(format!(
                "no AWS region to look up target group name {name:?}: set AWS_REGION (or use spec.targetGroupARN)"
            ));
        }
        let client = elbv2::Client::new(conf);
        let call = client.describe_target_groups().names(name).send();
        let answer = timeout(t, call).await;
        crate::metrics::aws_attempt("DescribeTargetGroups", &answer);
        match answer {
            Err(_) => Err(format!(
                "DescribeTargetGroups for {name:?} got no answer within {}",
                humantime::format_duration(t)
            )),
            Ok(Err(e)) => Err(format!(
                "DescribeTargetGroups for {name:?} failed: {}",
                aws_error(&e)
            )),
            Ok(Ok(out)) => out
                .target_groups()
                .iter()
                .find_map(|g| g.target_group_arn().map(String::from))
                .ok_or_else(|| format!("no target group named {name:?}")),
        }
    }
}

/// An HTTPS client with the WebPKI roots built in: the binary is copied into
/// images that may have no CA bundle.
pub fn https_client() -> aws_smithy_runtime_api::client::http::SharedHttpClient {
    use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
    let mut store = TrustStore::empty().with_native_roots(false);
    for der in webpki_root_certs::TLS_SERVER_ROOT_CERTS {
        let b64 = aws_smithy_types::base64::encode(der.as_ref());
        let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
        for chunk in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(chunk).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
        store.add_pem_certificate(pem);
    }
    let builder = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring));
    match TlsContext::builder().with_trust_store(store).build() {
        Ok(ctx) => builder.tls_context(ctx).build_https(),
        Err(e) => {
            tracing::warn!("embedded TLS roots rejected ({e}); using the defaults");
            builder.build_https()
        }
    }
}

/// The error code and message chain of an SDK error.
fn aws_error<E: ProvideErrorMetadata + std::error::Error + 'static, R: std::fmt::Debug>(
    e: &SdkError<E, R>,
) -> String {
    let base = DisplayErrorContext(e).to_string();
    match e.code() {
        Some(code) => format!("{code}: {}", e.message().unwrap_or(&base)),
        None => base,
    }
}

/// What one DescribeTargetHealth round said.
enum Round {
    Ok,
    Throttled,
    Transient(String),
}

/// Poll until every target is out, then settle. `Err` = unreadable (fallback).
pub async fn poll(
    targets: &[Target],
    settings: &Settings,
    elb: &mut Clients,
    progress: &Progress,
) -> Result<(), String> {
    let mut states: TargetStates = targets
        .iter()
        .map(|t| {
            (
                (t.arn.clone(), t.id.clone(), t.port),
                TargetState {
                    state: "unknown".into(),
                    reason: None,
                },
            )
        })
        .collect();
    let mut by_group: BTreeMap<&str, Vec<&Target>> = BTreeMap::new();
    for t in targets {
        by_group.entry(t.arn.as_str()).or_default().push(t);
    }
    let mut timer = Settle::default();
    let mut slowdown = 1u32;
    progress.targets(&states);
    loop {
        let mut throttled = false;
        for (arn, group) in &by_group {
            let client = elb.for_arn(arn).await;
            match describe(&client, arn, group, settings.request_timeout, &mut states).await? {
                Round::Ok => {}
                Round::Throttled => throttled = true,
                Round::Transient(e) => {
                    tracing::debug!(target_group = %arn, error = %e, "DescribeTargetHealth failed; retrying")
                }
            }
        }
        progress.targets(&states);
        slowdown = if throttled { (slowdown * 2).min(16) } else { 1 };
        if throttled {
            tracing::debug!(slowdown, "DescribeTargetHealth throttled; polling slower");
        }
        let now = Instant::now();
        timer.observe(all_targets_out(&states), now);
        if let Some(pass_at) = timer.passes_at(settings.lb_settle) {
            // All out: no need to ask again, the settle is pure waiting.
            progress.see(format!(
                "targets out ({}); settling {}",
                states.len(),
                humantime::format_duration(settings.lb_settle)
            ));
            sleep_until(pass_at).await;
            progress.see(format!("targets out ({}), settled", states.len()));
            return Ok(());
        }
        let waiting = states.values().filter(|s| !s.is_out()).count();
        progress.see(format!(
            "{waiting} of {} targets still in rotation",
            states.len()
        ));
        sleep_until(now + k8s::jitter(settings.poll_interval * slowdown, 0.2)).await;
    }
}

async fn describe(
    client: &elbv2::Client,
    arn: &str,
    group: &[&Target],
    t: Duration,
    states: &mut TargetStates,
) -> Result<Round, String> {
    let descs: Vec<TargetDescription> = group
        .iter()
        .map(|g| {
            TargetDescription::builder()
                .id(&g.id)
                .port(i32::from(g.port))
                .build()
        })
        .collect();
    let call = client
        .describe_target_health()
        .target_group_arn(arn)
        .set_targets(Some(descs))
        .send();
    let answer = timeout(t, call).await;
    crate::metrics::aws_attempt("DescribeTargetHealth", &answer);
    let out = match answer {
        Err(_) => {
            return Ok(Round::Transient(format!(
                "no answer within {}",
                humantime::format_duration(t)
            )));
        }
        Ok(Ok(out)) => out,
        Ok(Err(e)) => {
            let code = e.code().unwrap_or_default().to_string();
            return match code.as_str() {
                "Throttling" | "ThrottlingException" | "RequestLimitExceeded" => {
                    Ok(Round::Throttled)
                }
                "InvalidTarget" if group.len() > 1 => {
                    // Which one? Ask each alone.
                    let mut round = Round::Ok;
                    for one in group {
                        match Box::pin(describe(client, arn, &[*one], t, states)).await? {
                            Round::Ok => {}
                            other => round = other,
                        }
                    }
                    Ok(round)
                }
                "InvalidTarget" => {
                    let one = group[0];
                    states.insert(
                        (arn.to_string(), one.id.clone(), one.port),
                        TargetState {
                            state: "invalid".into(),
                            reason: Some("InvalidTarget".into()),
                        },
                    );
                    Ok(Round::Ok)
                }
                "TargetGroupNotFound" => Err(format!(
                    "target group {arn} not found ({}); fix the TargetGroupBinding or DRAINWAIT_AWS_TARGET_GROUP_ARNS, and check AWS_REGION",
                    aws_error(&e)
                )),
                "AccessDenied" | "AccessDeniedException" | "UnauthorizedOperation" => Err(format!(
                    "{}; allow elasticloadbalancing:DescribeTargetHealth and elasticloadbalancing:DescribeTargetGroups for the pod's IAM role",
                    aws_error(&e)
                )),
                _ => {
                    let msg = aws_error(&e);
                    if is_credentials_error(&msg) {
                        Err(format!(
                            "no usable AWS credentials ({msg}); give the pod an IAM role (IRSA or EKS Pod Identity) or set AWS credentials"
                        ))
                    } else {
                        Ok(Round::Transient(msg))
                    }
                }
            };
        }
    };
    for d in out.target_health_descriptions() {
        let (Some(target), Some(health)) = (d.target(), d.target_health()) else {
            continue;
        };
        let id = target.id().unwrap_or_default().to_string();
        let port = target
            .port()
            .and_then(|p| u16::try_from(p).ok())
            .unwrap_or(0);
        let key = (arn.to_string(), id, port);
        // Only the targets we asked for: an answer for another port is not ours.
        if let Some(s) = states.get_mut(&key) {
            *s = TargetState {
                state: health
                    .state()
                    .map(|s| s.as_str().to_string())
                    .unwrap_or_else(|| "unknown".into()),
                reason: health.reason().map(|r| r.as_str().to_string()),
            };
        }
    }
    Ok(Round::Ok)
}

fn is_credentials_error(msg: &str) -> bool {
    let m = msg.to_ascii_lowercase();
    m.contains("credential") && !m.contains("invalidclienttokenid")
        || m.contains("no credentials")
        || m.contains("failed to load")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(spec: serde_json::Value) -> Binding {
        let mut o = DynamicObject::new("tgb", &tgb_resource());
        o.data = serde_json::json!({ "spec": spec });
        Binding::from_object(&o)
    }

    #[test]
    fn binding_spec_is_read_with_its_defaults() {
        let b = binding(serde_json::json!({
            "serviceRef": {"name": "argo-server", "port": "web"},
            "targetGroupARN": "",
            "targetGroupName": "argo",
            "ipAddressType": "ipv6",
        }));
        assert_eq!(b.name, "tgb");
        assert_eq!(b.service, "argo-server");
        assert_eq!(b.port_text(), "web");
        // An empty ARN is no ARN: the name is used.
        assert_eq!(
            (b.arn.as_deref(), b.group_name.as_deref()),
            (None, Some("argo"))
        );
        assert!(b.ipv6);
        // Unset targetType: treated as ip, so the pod's IP is polled.
        assert_eq!(b.target_type, None);
        assert!(!b.is_instance());

        let b = binding(serde_json::json!({
            "serviceRef": {"name": "s", "port": 80},
            "targetType": "instance",
            "targetGroupARN": "arn:aws:elasticloadbalancing:eu-west-1:1:targetgroup/t/1",
        }));
        assert_eq!(b.port_text(), "80");
        assert!(b.is_instance() && !b.ipv6);
        assert!(b.arn.is_some());
    }

    #[test]
    fn credentials_errors_are_recognised() {
        assert!(is_credentials_error(
            "failed to construct request: an error occurred while loading credentials"
        ));
        assert!(is_credentials_error(
            "dispatch failure: no credentials in the property bag"
        ));
        assert!(!is_credentials_error(
            "dispatch failure: connection refused"
        ));
    }

    #[test]
    fn tgb_resource_is_v1beta1() {
        let r = tgb_resource();
        assert_eq!(
            (r.api_version.as_str(), r.plural.as_str()),
            ("elbv2.k8s.aws/v1beta1", "targetgroupbindings")
        );
    }
}
