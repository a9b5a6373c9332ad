//! The `drainwait` binary: parse, set up logging, run, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use drainwait::config::{
    CheckArgs, Cli, Command, ConfigError, LogSettings, ServeArgs, Settings, WaitArgs,
};
use drainwait::run::Signal;
use drainwait::{check, install, logging, run, serve};
use tokio::time::Instant;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Install { dir }) => install_cmd(&dir),
        Some(Command::Wait(args)) => wait_cmd(&args),
        Some(Command::Serve(args)) => serve_cmd(&args),
        Some(Command::Check(args)) => check_cmd(&args),
        #[cfg(feature = "sim")]
        Some(Command::Demo(args)) => demo_cmd(args),
        None => wait_cmd(&cli.wait),
    }
}

/// `drainwait demo`: the simulated rollout (see `sim/demo.rs`).
#[cfg(feature = "sim")]
fn demo_cmd(args: drainwait::sim::demo::DemoArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::from(1);
    };
    ExitCode::from(rt.block_on(drainwait::sim::demo::cli(args)))
}

/// `drainwait serve`: the sidecar's HTTP server (see `serve.rs`).
fn serve_cmd(args: &ServeArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::from(1);
    };
    rt.block_on(async {
        logging::init(&LogSettings::lenient(&args.wait));
        ExitCode::from(serve::run(args).await)
    })
}

/// `drainwait check`: the preflight table (see `check.rs`).
fn check_cmd(args: &CheckArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::from(1);
    };
    rt.block_on(async {
        logging::init(&LogSettings::lenient(&args.wait));
        ExitCode::from(check::run(&args.wait, args.output).await)
    })
}

fn runtime() -> Option<tokio::runtime::Runtime> {
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => Some(rt),
        Err(e) => {
            eprintln!("drainwait: cannot start the async runtime: {e}");
            None
        }
    }
}

fn wait_cmd(args: &WaitArgs) -> ExitCode {
    let Some(rt) = runtime() else {
        return ExitCode::from(1);
    };
    rt.block_on(async {
        let start = Instant::now();
        logging::init(&LogSettings::lenient(args));
        let code = match Settings::from_args(args) {
            Ok(settings) => run::wait(settings, start, signal()).await.exit_code,
            Err(e) => invalid_config(&e, args, start).await,
        };
        ExitCode::from(code)
    })
}

/// SPEC step 1: one clear line, the fallback wait from start, exit 2.
async fn invalid_config(e: &ConfigError, args: &WaitArgs, start: Instant) -> u8 {
    let wait = Settings::fallback_for_invalid(args);
    tracing::error!(
        var = e.var,
        value = %e.value,
        "invalid configuration: {e}; waiting DRAINWAIT_FALLBACK_WAIT ({}) from start, then exiting 2",
        humantime::format_duration(wait)
    );
    tokio::select! {
        () = tokio::time::sleep_until(start + wait) => 2,
        s = signal() => {
            tracing::warn!("received {s:?} during the fallback wait, exiting at once");
            if s == Signal::Interrupt { 130 } else { 143 }
        }
    }
}

/// Resolves on SIGINT or SIGTERM. If a handler cannot be installed, never resolves
/// (the deadline still ends the wait).
async fn signal() -> Signal {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        tracing::warn!(
            "cannot install signal handlers; SIGINT/SIGTERM will not end the wait early"
        );
        return std::future::pending().await;
    };
    tokio::select! {
        _ = int.recv() => Signal::Interrupt,
        _ = term.recv() => Signal::Terminate,
    }
}

fn install_cmd(dir: &std::path::Path) -> ExitCode {
    let Some(exe) = install::own_executable() else {
        eprintln!(
            "drainwait install: cannot find this executable (no /proc/self/exe and no path in argv[0]); run it by its full path, e.g. /drainwait install {}",
            dir.display()
        );
        return ExitCode::from(1);
    };
    match install::install(&exe, dir) {
        Ok(p) => {
            println!("installed {}", p.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!(
                "drainwait install: {e}; check that {} is writable (an emptyDir mounted there)",
                dir.display()
            );
            ExitCode::from(1)
        }
    }
}
