//! Command line and environment: what the user asked for, checked once.
//!
//! clap reads every flag and its `DRAINWAIT_…` env var as a *raw string*
//! ([`WaitArgs`]), so that a bad value never makes clap exit before the
//! fallback wait SPEC asks for. [`Settings::from_args`] then turns the strings
//! into typed values ([`Dur`], [`NameList`], [`TargetGroupArn`], …) and
//! reports the first bad one as a [`ConfigError`] naming the variable, the
//! value and the accepted forms. Usage errors (unknown flag or subcommand)
//! stay clap's and exit 2 at once.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// `drainwait`: keep a terminating pod alive until its load balancer has let go of it.
#[derive(Debug, Parser)]
#[command(name = "drainwait", version, about, long_about = None, args_conflicts_with_subcommands = true)]
pub struct Cli {
    /// What to run; without one, `wait`.
    #[command(subcommand)]
    pub command: Option<Command>,

    #[command(flatten)]
    pub wait: WaitArgs,
}

/// The subcommands.
// Parsed once at start-up: the size of the biggest variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// The preStop hook: wait until the pod is out of its endpoints and load balancer, then exit.
    Wait(WaitArgs),
    /// Copy this executable to DIR/drainwait (atomic, mode 0755), e.g. into an emptyDir from an init container.
    Install {
        /// Directory to copy into; created when missing.
        dir: PathBuf,
    },
    /// Sidecar: HTTP server whose GET /drain runs the wait and answers when done (for a preStop httpGet hook).
    Serve(ServeArgs),
    /// Preflight: config, API, RBAC, pod, Services, target groups and their state; exit 0 only if a drain would work.
    Check(CheckArgs),
    /// Run a rolling restart under load against an embedded simulated cluster and ALB: no hook, sleep, drainwait.
    #[cfg(feature = "sim")]
    Demo(crate::sim::demo::DemoArgs),
}

/// Options of `serve`: the wait's, plus where to listen.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// The wait's options: the drain that /drain runs.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Address and port to serve /drain, /healthz and /metrics on (kubelet calls the pod IP).
    #[arg(long, env = "DRAINWAIT_LISTEN", default_value = "0.0.0.0:9090")]
    pub listen: String,
}

/// Options of `check`: the wait's (checked as a drain would use them), plus the output format.
#[derive(Debug, Clone, Args)]
pub struct CheckArgs {
    /// The wait's options, checked as a drain would use them.
    #[command(flatten)]
    pub wait: WaitArgs,
    /// Output: a readable table, or one JSON list of {check, ok, detail, fix} for scripts.
    #[arg(long, short = 'o', value_enum, default_value = "text")]
    pub output: OutputFormat,
}

/// Output format of `check`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// A table, one line per check.
    Text,
    /// One JSON document.
    Json,
}

/// Options of the wait. Every value is kept as text here and checked by [`Settings::from_args`].
#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Pod name [fallbacks: POD_NAME, HOSTNAME].
    #[arg(long, env = "DRAINWAIT_POD_NAME")]
    pub pod_name: Option<String>,
    /// Pod namespace [fallbacks: POD_NAMESPACE, the service account's namespace file, the kubeconfig context].
    #[arg(long, env = "DRAINWAIT_POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Hard cap on the whole wait, from process start.
    #[arg(long, env = "DRAINWAIT_MAX_WAIT", default_value = "5m")]
    pub max_wait: String,
    /// Time kept for the app after drainwait exits: never run past deletionTimestamp minus this.
    #[arg(long, env = "DRAINWAIT_SHUTDOWN_RESERVE", default_value = "5s")]
    pub shutdown_reserve: String,
    /// After the pod is out of all ready endpoints, time for kube-proxy and in-cluster proxies to sync.
    #[arg(long, env = "DRAINWAIT_ENDPOINTS_SETTLE", default_value = "2s")]
    pub endpoints_settle: String,
    /// After every LB target is draining or deregistered, time for the LB's own nodes to stop routing.
    #[arg(long, env = "DRAINWAIT_LB_SETTLE", default_value = "15s")]
    pub lb_settle: String,
    /// Load balancer poll period (jittered; backs off on throttling).
    #[arg(long, env = "DRAINWAIT_POLL_INTERVAL", default_value = "2s")]
    pub poll_interval: String,
    /// When a signal cannot be read, wait this long from start instead (still capped by the deadline).
    #[arg(long, env = "DRAINWAIT_FALLBACK_WAIT", default_value = "30s")]
    pub fallback_wait: String,
    /// Timeout of each Kubernetes or AWS request.
    #[arg(long, env = "DRAINWAIT_REQUEST_TIMEOUT", default_value = "5s")]
    pub request_timeout: String,
    /// Comma list of Service names to consider [default: every Service whose EndpointSlices list this pod].
    #[arg(long, env = "DRAINWAIT_SERVICES")]
    pub services: Option<String>,
    /// Load balancer to wait for: auto, aws or none.
    #[arg(long, env = "DRAINWAIT_LB", default_value = "auto")]
    pub lb: String,
    /// Comma list of target group ARNs to check besides those from TargetGroupBindings.
    #[arg(long, env = "DRAINWAIT_AWS_TARGET_GROUP_ARNS")]
    pub aws_target_group_arns: Option<String>,
    /// Target port for the explicit ARNs [default: the pod's port from its EndpointSlice, when unambiguous].
    #[arg(long, env = "DRAINWAIT_AWS_TARGET_PORT")]
    pub aws_target_port: Option<String>,
    /// When the pod has no deletionTimestamp (restart, node shutdown): exit or wait.
    #[arg(long, env = "DRAINWAIT_IF_NOT_DELETING", default_value = "exit")]
    pub if_not_deleting: String,
    /// Record a Kubernetes Event on the pod with the outcome: true or false.
    #[arg(long, env = "DRAINWAIT_EVENTS", default_value = "true")]
    pub events: String,
    /// Log format: text or json.
    #[arg(long, env = "DRAINWAIT_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Log filter directive (tracing EnvFilter syntax).
    #[arg(long, env = "DRAINWAIT_LOG", default_value = "info")]
    pub log: String,
    /// Also write logs to /proc/1/fd/1 so `kubectl logs` shows them: auto, true or false.
    #[arg(long, env = "DRAINWAIT_LOG_TO_PID1", default_value = "auto")]
    pub log_to_pid1: String,
}

/// A bad configuration value: which variable, what it was, what is accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {var} (--{flag}) value {value:?}: expected {accepted}")]
pub struct ConfigError {
    /// The environment variable.
    pub var: &'static str,
    /// The long flag, without dashes.
    pub flag: &'static str,
    /// The rejected value.
    pub value: String,
    /// The accepted forms.
    pub accepted: String,
}

/// A duration: `90s`, `2m`, `1m30s`, `500ms`, or bare seconds `90`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl FromStr for Dur {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let s = s.trim();
        if let Ok(secs) = s.parse::<u64>() {
            return Ok(Dur(Duration::from_secs(secs)));
        }
        humantime::parse_duration(s).map(Dur).map_err(|_| ())
    }
}

const DURATION_FORMS: &str = "a duration like 90s, 2m, 1m30s, 500ms or bare seconds 90";

/// A comma-separated list of non-empty names (spaces around items are ignored).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct NameList(pub Vec<String>);

impl FromStr for NameList {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let items: Vec<String> = s
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(String::from)
            .collect();
        if items.iter().all(|i| is_dns_label(i)) {
            Ok(NameList(items))
        } else {
            Err(())
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An ELBv2 target group ARN, e.g.
/// `arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/name/0123456789abcdef`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TargetGroupArn(String);

impl TargetGroupArn {
    /// The region field of the ARN.
    pub fn region(&self) -> &str {
        self.0.split(':').nth(3).unwrap_or_default()
    }
    /// The whole ARN.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TargetGroupArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for TargetGroupArn {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        let parts: Vec<&str> = s.trim().splitn(6, ':').collect();
        let ok = parts.len() == 6
            && parts[0] == "arn"
            && parts[1].starts_with("aws")
            && parts[2] == "elasticloadbalancing"
            && !parts[3].is_empty()
            && !parts[4].is_empty()
            && parts[5].starts_with("targetgroup/");
        if ok {
            Ok(TargetGroupArn(s.trim().to_string()))
        } else {
            Err(())
        }
    }
}

/// Which load balancer gate to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LbMode {
    /// AWS when TargetGroupBindings or ARNs apply, else none.
    Auto,
    /// AWS, and fail (fallback) when no target can be found.
    Aws,
    /// No load balancer gate.
    None,
}

/// What to do when the pod is not being deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfNotDeleting {
    /// Exit 0 at once.
    Exit,
    /// Run the wait as usual (deadline = start + max wait).
    Wait,
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Whether to mirror logs to PID 1's stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pid1 {
    /// When /proc/1/fd/1 can be opened and drainwait is not PID 1 itself.
    Auto,
    /// Always (a warning when it cannot be opened).
    On,
    /// Never.
    Off,
}

/// Logging settings, parsed leniently first so that config errors can be logged in the asked format.
#[derive(Debug, Clone)]
pub struct LogSettings {
    /// Text or JSON.
    pub format: LogFormat,
    /// EnvFilter directive.
    pub filter: String,
    /// Mirror to PID 1.
    pub pid1: Pid1,
}

/// The checked configuration of a wait.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Explicit pod name, else resolved from POD_NAME / HOSTNAME.
    pub pod_name: Option<String>,
    /// Explicit namespace, else resolved later.
    pub pod_namespace: Option<String>,
    /// Hard cap from start.
    pub max_wait: Duration,
    /// Time kept for the app before the grace period ends.
    pub shutdown_reserve: Duration,
    /// Settle after leaving the endpoints.
    pub endpoints_settle: Duration,
    /// Settle after the LB targets are out.
    pub lb_settle: Duration,
    /// LB poll period.
    pub poll_interval: Duration,
    /// Fallback wait from start for an unreadable signal.
    pub fallback_wait: Duration,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Services to consider; empty = all listing the pod.
    pub services: Vec<String>,
    /// LB mode.
    pub lb: LbMode,
    /// Explicit target group ARNs.
    pub aws_target_group_arns: Vec<TargetGroupArn>,
    /// Port for explicit ARNs.
    pub aws_target_port: Option<u16>,
    /// Behaviour without deletionTimestamp.
    pub if_not_deleting: IfNotDeleting,
    /// Record an Event.
    pub events: bool,
    /// Logging.
    pub log: LogSettings,
}

fn bad(var: &'static str, flag: &'static str, value: &str, accepted: &str) -> ConfigError {
    ConfigError {
        var,
        flag,
        value: value.to_string(),
        accepted: accepted.to_string(),
    }
}

fn duration(var: &'static str, flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    value
        .parse::<Dur>()
        .map(|d| d.0)
        .map_err(|()| bad(var, flag, value, DURATION_FORMS))
}

fn positive(var: &'static str, flag: &'static str, value: &str) -> Result<Duration, ConfigError> {
    match duration(var, flag, value)? {
        d if d.is_zero() => Err(bad(
            var,
            flag,
            value,
            "a duration greater than zero, like 2s",
        )),
        d => Ok(d),
    }
}

fn boolean(var: &'static str, flag: &'static str, value: &str) -> Result<bool, ConfigError> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        _ => Err(bad(var, flag, value, "true or false")),
    }
}

impl LogSettings {
    /// Parse the log options; bad values fall back to defaults and are reported by [`Settings::from_args`].
    pub fn lenient(args: &WaitArgs) -> LogSettings {
        LogSettings {
            format: Self::format(&args.log_format).unwrap_or(LogFormat::Text),
            filter: args.log.clone(),
            pid1: Self::pid1(&args.log_to_pid1).unwrap_or(Pid1::Auto),
        }
    }

    fn format(v: &str) -> Result<LogFormat, ConfigError> {
        match v.trim() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(bad("DRAINWAIT_LOG_FORMAT", "log-format", v, "text or json")),
        }
    }

    fn pid1(v: &str) -> Result<Pid1, ConfigError> {
        match v.trim() {
            "auto" => Ok(Pid1::Auto),
            "true" => Ok(Pid1::On),
            "false" => Ok(Pid1::Off),
            _ => Err(bad(
                "DRAINWAIT_LOG_TO_PID1",
                "log-to-pid1",
                v,
                "auto, true or false",
            )),
        }
    }
}

impl Settings {
    /// Check every value; the first bad one is the error.
    pub fn from_args(a: &WaitArgs) -> Result<Settings, ConfigError> {
        let services = match &a.services {
            None => Vec::new(),
            Some(v) => {
                v.parse::<NameList>()
                    .map_err(|()| {
                        bad(
                            "DRAINWAIT_SERVICES",
                            "services",
                            v,
                            "a comma list of Service names (lowercase DNS labels), like argo-server,argo-server-grpc",
                        )
                    })?
                    .0
            }
        };
        let arns = match &a.aws_target_group_arns {
            None => Vec::new(),
            Some(v) => v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(|s| {
                    s.parse::<TargetGroupArn>().map_err(|()| {
                        bad(
                            "DRAINWAIT_AWS_TARGET_GROUP_ARNS",
                            "aws-target-group-arns",
                            s,
                            "a comma list of target group ARNs like arn:aws:elasticloadbalancing:REGION:ACCOUNT:targetgroup/NAME/ID",
                        )
                    })
                })
                .collect::<Result<_, _>>()?,
        };
        let port = match &a.aws_target_port {
            None => None,
            Some(v) if v.trim().is_empty() => None,
            Some(v) => match v.trim().parse::<u16>() {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    return Err(bad(
                        "DRAINWAIT_AWS_TARGET_PORT",
                        "aws-target-port",
                        v,
                        "a port number from 1 to 65535",
                    ));
                }
            },
        };
        let lb = match a.lb.trim() {
            "auto" => LbMode::Auto,
            "aws" => LbMode::Aws,
            "none" => LbMode::None,
            _ => return Err(bad("DRAINWAIT_LB", "lb", &a.lb, "auto, aws or none")),
        };
        let if_not_deleting = match a.if_not_deleting.trim() {
            "exit" => IfNotDeleting::Exit,
            "wait" => IfNotDeleting::Wait,
            _ => {
                return Err(bad(
                    "DRAINWAIT_IF_NOT_DELETING",
                    "if-not-deleting",
                    &a.if_not_deleting,
                    "exit or wait",
                ));
            }
        };
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&a.log) {
            return Err(bad(
                "DRAINWAIT_LOG",
                "log",
                &a.log,
                &format!("a tracing filter like info, debug or drainwait=debug,warn ({e})"),
            ));
        }
        Ok(Settings {
            pod_name: non_empty(&a.pod_name),
            pod_namespace: non_empty(&a.pod_namespace),
            max_wait: duration("DRAINWAIT_MAX_WAIT", "max-wait", &a.max_wait)?,
            shutdown_reserve: duration(
                "DRAINWAIT_SHUTDOWN_RESERVE",
                "shutdown-reserve",
                &a.shutdown_reserve,
            )?,
            endpoints_settle: duration(
                "DRAINWAIT_ENDPOINTS_SETTLE",
                "endpoints-settle",
                &a.endpoints_settle,
            )?,
            lb_settle: duration("DRAINWAIT_LB_SETTLE", "lb-settle", &a.lb_settle)?,
            poll_interval: positive("DRAINWAIT_POLL_INTERVAL", "poll-interval", &a.poll_interval)?,
            fallback_wait: duration("DRAINWAIT_FALLBACK_WAIT", "fallback-wait", &a.fallback_wait)?,
            request_timeout: positive(
                "DRAINWAIT_REQUEST_TIMEOUT",
                "request-timeout",
                &a.request_timeout,
            )?,
            services,
            lb,
            aws_target_group_arns: arns,
            aws_target_port: port,
            if_not_deleting,
            events: boolean("DRAINWAIT_EVENTS", "events", &a.events)?,
            log: LogSettings {
                format: LogSettings::format(&a.log_format)?,
                filter: a.log.clone(),
                pid1: LogSettings::pid1(&a.log_to_pid1)?,
            },
        })
    }

    /// The fallback wait to use when the configuration itself is bad: the
    /// configured one when it parses, else its default.
    pub fn fallback_for_invalid(a: &WaitArgs) -> Duration {
        a.fallback_wait
            .parse::<Dur>()
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(30))
    }
}

fn non_empty(v: &Option<String>) -> Option<String> {
    v.as_ref()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> WaitArgs {
        let mut argv = vec!["drainwait"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).expect("parse").wait
    }

    #[test]
    fn durations_accept_spec_forms() {
        for (s, ms) in [
            ("90s", 90_000),
            ("2m", 120_000),
            ("1m30s", 90_000),
            ("500ms", 500),
            ("90", 90_000),
            ("0", 0),
        ] {
            assert_eq!(s.parse::<Dur>(), Ok(Dur(Duration::from_millis(ms))), "{s}");
        }
        for s in ["", "abc", "-1", "5 parsecs", "1.5"] {
            assert!(s.parse::<Dur>().is_err(), "{s}");
        }
    }

    #[test]
    fn defaults_match_spec() {
        let s = Settings::from_args(&args(&[])).expect("defaults valid");
        assert_eq!(s.max_wait, Duration::from_secs(300));
        assert_eq!(s.shutdown_reserve, Duration::from_secs(5));
        assert_eq!(s.endpoints_settle, Duration::from_secs(2));
        assert_eq!(s.lb_settle, Duration::from_secs(15));
        assert_eq!(s.poll_interval, Duration::from_secs(2));
        assert_eq!(s.fallback_wait, Duration::from_secs(30));
        assert_eq!(s.lb, LbMode::Auto);
        assert_eq!(s.if_not_deleting, IfNotDeleting::Exit);
        assert!(s.events);
        assert_eq!(s.log.format, LogFormat::Text);
        assert_eq!(s.log.pid1, Pid1::Auto);
        assert!(s.services.is_empty() && s.aws_target_group_arns.is_empty());
    }

    #[test]
    fn bad_values_name_var_value_and_forms() {
        let e = Settings::from_args(&args(&["--max-wait", "forever"])).unwrap_err();
        assert_eq!(e.var, "DRAINWAIT_MAX_WAIT");
        assert_eq!(e.value, "forever");
        let msg = e.to_string();
        assert!(
            msg.contains("DRAINWAIT_MAX_WAIT")
                && msg.contains("\"forever\"")
                && msg.contains("1m30s"),
            "{msg}"
        );

        let e = Settings::from_args(&args(&["--lb", "gcp"])).unwrap_err();
        assert_eq!(
            (e.var, e.accepted.as_str()),
            ("DRAINWAIT_LB", "auto, aws or none")
        );
        let e = Settings::from_args(&args(&["--poll-interval", "0s"])).unwrap_err();
        assert_eq!(e.var, "DRAINWAIT_POLL_INTERVAL");
        let e = Settings::from_args(&args(&["--aws-target-port", "70000"])).unwrap_err();
        assert_eq!(e.var, "DRAINWAIT_AWS_TARGET_PORT");
        let e = Settings::from_args(&args(&["--aws-target-group-arns", "arn:aws:s3:::bucket"]))
            .unwrap_err();
        assert_eq!(e.value, "arn:aws:s3:::bucket");
        let e = Settings::from_args(&args(&["--services", "Argo_Server"])).unwrap_err();
        assert_eq!(e.var, "DRAINWAIT_SERVICES");
        let e = Settings::from_args(&args(&["--events", "maybe"])).unwrap_err();
        assert_eq!(e.var, "DRAINWAIT_EVENTS");
    }

    #[test]
    fn lists_and_arns_parse() {
        let s = Settings::from_args(&args(&[
            "--services",
            " argo-server , argo-grpc,",
            "--aws-target-group-arns",
            "arn:aws:elasticloadbalancing:eu-west-1:123456789012:targetgroup/a/0123,arn:aws-cn:elasticloadbalancing:cn-north-1:1:targetgroup/b/1",
            "--aws-target-port",
            "2746",
        ]))
        .expect("valid");
        assert_eq!(s.services, vec!["argo-server", "argo-grpc"]);
        assert_eq!(s.aws_target_group_arns.len(), 2);
        assert_eq!(s.aws_target_group_arns[0].region(), "eu-west-1");
        assert_eq!(s.aws_target_group_arns[1].region(), "cn-north-1");
        assert_eq!(s.aws_target_port, Some(2746));
    }

    #[test]
    fn invalid_fallback_uses_default_when_itself_invalid() {
        assert_eq!(
            Settings::fallback_for_invalid(&args(&["--fallback-wait", "7s"])),
            Duration::from_secs(7)
        );
        assert_eq!(
            Settings::fallback_for_invalid(&args(&["--fallback-wait", "soon"])),
            Duration::from_secs(30)
        );
    }

    #[test]
    fn wait_subcommand_and_top_level_share_options() {
        let cli = Cli::try_parse_from(["drainwait", "wait", "--lb", "none"]).expect("parse");
        match cli.command {
            Some(Command::Wait(w)) => assert_eq!(w.lb, "none"),
            other => panic!("expected wait, got {other:?}"),
        }
        assert!(Cli::try_parse_from(["drainwait", "--no-such-flag"]).is_err());
    }
}
