//! The simulated world drainwait is tested, demonstrated and benchmarked against.
//!
//! Real HTTP on loopback, no cluster: [`kube`] is a fake Kubernetes API server
//! (pods, services, EndpointSlices with list+watch, TargetGroupBindings,
//! events, SelfSubjectAccessReview, fault injection) and [`elb`] a fake ELBv2
//! query-protocol endpoint (scheduled target states, throttling, errors).
//! On top of them, for the demo and benchmarks: [`cluster`] (pods that serve
//! HTTP, an endpoints controller, termination with a preStop hook), [`alb`]
//! (a reverse proxy with ALB's control plane and its routing lag), [`load`]
//! and [`client`] (steady traffic over keep-alive connections), [`demo`]
//! (`drainwait demo`), [`storm`] (many drains against a throttled ELBv2) and
//! [`plot`] (the SVG). Built only with the `sim` cargo feature; the shipped
//! binary has none of it.

pub mod alb;
pub mod client;
pub mod cluster;
pub mod demo;
pub mod elb;
pub mod http;
pub mod kube;
pub mod load;
pub mod plot;
pub mod storm;
