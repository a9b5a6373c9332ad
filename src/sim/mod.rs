//! The simulated world drainwait is tested, demonstrated and benchmarked against.
//!
//! Real HTTP on loopback, no cluster: [`kube`] is a fake Kubernetes API server
//! (pods, services, EndpointSlices with list+watch, TargetGroupBindings,
//! events, SelfSubjectAccessReview, fault injection) and [`elb`] a fake ELBv2
//! query-protocol endpoint (scheduled target states, throttling, errors).
//! Built only with the `sim` cargo feature; the shipped binary has none of it.

pub mod elb;
pub mod http;
pub mod kube;
