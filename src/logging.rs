//! Logging: text or JSON lines on stderr, mirrored to PID 1's stdout.
//!
//! Hook output is invisible in Kubernetes (`kubectl logs` shows only the
//! container's PID 1), so with `DRAINWAIT_LOG_TO_PID1` every line is also
//! written to `/proc/1/fd/1`. Dependency targets that can print credentials
//! or signed requests at debug/trace (aws-sigv4's canonical request, HTTP
//! internals) are capped whatever `DRAINWAIT_LOG` says, so `trace` stays
//! free of secrets.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use tracing::Level;
use tracing_subscriber::filter::{EnvFilter, FilterExt, filter_fn};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::config::{LogFormat, LogSettings, Pid1};

/// Where PID 1's stdout is, seen from a process in the same container.
pub const PID1_STDOUT: &str = "/proc/1/fd/1";

/// Is this event allowed through the secret guard?
fn secret_safe(target: &str, level: &Level) -> bool {
    // aws-sigv4 logs canonical requests and signing keys' inputs: never.
    if target.starts_with("aws_sigv4") {
        return false;
    }
    let capped = [
        "aws_",
        "hyper",
        "h2",
        "rustls",
        "tower",
        "http",
        "kube_client",
        "kube_runtime",
        "reqwest",
    ];
    if capped.iter().any(|p| target.starts_with(p)) {
        return *level <= Level::INFO;
    }
    true
}

/// stderr, plus PID 1's stdout when open.
#[derive(Clone)]
struct Tee {
    pid1: Option<Arc<Mutex<File>>>,
}

struct TeeWriter {
    pid1: Option<Arc<Mutex<File>>>,
}

impl Write for TeeWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        io::stderr().write_all(buf)?;
        if let Some(f) = &self.pid1
            && let Ok(mut f) = f.lock()
        {
            // Best effort: a closed PID 1 stdout must not fail the hook.
            let _ = f.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        io::stderr().flush()
    }
}

impl<'a> MakeWriter<'a> for Tee {
    type Writer = TeeWriter;
    fn make_writer(&'a self) -> TeeWriter {
        TeeWriter {
            pid1: self.pid1.clone(),
        }
    }
}

fn open_pid1(mode: Pid1) -> (Option<Arc<Mutex<File>>>, Option<String>) {
    if mode == Pid1::Off || (mode == Pid1::Auto && std::process::id() == 1) {
        return (None, None);
    }
    match OpenOptions::new().append(true).open(PID1_STDOUT) {
        Ok(f) => (Some(Arc::new(Mutex::new(f))), None),
        Err(e) if mode == Pid1::On => (
            None,
            Some(format!(
                "cannot write logs to {PID1_STDOUT} ({e}); logs go to stderr only"
            )),
        ),
        Err(_) => (None, None),
    }
}

static JSON: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Whether logs are JSON (structured fields may then carry whole objects).
pub fn is_json() -> bool {
    JSON.load(std::sync::atomic::Ordering::Relaxed)
}

/// Install the global subscriber. Safe to call once; later calls do nothing.
pub fn init(log: &LogSettings) {
    JSON.store(
        log.format == LogFormat::Json,
        std::sync::atomic::Ordering::Relaxed,
    );
    let filter = EnvFilter::try_new(&log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (pid1, warning) = open_pid1(log.pid1);
    let writer = Tee { pid1 };
    let guard = filter_fn(|m| secret_safe(m.target(), m.level()));
    let layer = match log.format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .with_writer(writer)
            .with_filter(filter.and(guard))
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_target(false)
            .with_writer(writer)
            .with_filter(filter.and(guard))
            .boxed(),
    };
    let _ = Registry::default().with(layer).try_init();
    if let Some(w) = warning {
        tracing::warn!("{w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_guard_caps_dependencies() {
        assert!(!secret_safe("aws_sigv4::http_request::sign", &Level::ERROR));
        assert!(!secret_safe(
            "aws_smithy_runtime::client::orchestrator",
            &Level::TRACE
        ));
        assert!(!secret_safe("hyper_util::client", &Level::DEBUG));
        assert!(secret_safe("aws_config::meta", &Level::INFO));
        assert!(secret_safe("drainwait::endpoints", &Level::TRACE));
    }
}
