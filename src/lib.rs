//! drainwait: keep a terminating pod alive exactly as long as its load balancer still routes to it.
//!
//! `main.rs` parses the command line and calls into here: [`config`] checks
//! the settings, [`run`] drives the wait, whose gates live in [`endpoints`]
//! and [`aws`] and whose decisions are the pure functions of [`decision`];
//! [`report`] writes the summary and the Event; [`k8s`] holds the API
//! plumbing; [`pod`] the identity and deadline; [`logging`] and [`install`]
//! do what they say. [`serve`] is the sidecar's HTTP server around the
//! same wait, [`check`] the preflight, [`metrics`] the counters `serve`
//! exposes. [`sim`] (feature `sim`) is the simulated world the tests,
//! demo and benchmark run against.

pub mod aws;
pub mod check;
pub mod config;
pub mod decision;
pub mod endpoints;
pub mod install;
pub mod k8s;
pub mod logging;
pub mod metrics;
pub mod pod;
pub mod report;
pub mod run;
pub mod serve;
#[cfg(feature = "sim")]
pub mod sim;
