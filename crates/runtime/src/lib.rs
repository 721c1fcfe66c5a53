//! podsnap's node runtime: Kubernetes Pods turned into engine sandboxes and run.
//!
//! [`plan`] is pure — a container and its image's config become a process exactly as the
//! kubelet would start it (command and args against entrypoint and cmd, environment with
//! `$(VAR)` expansion and `fieldRef`s, working directory, user), volumes become mounts, and
//! restarts follow the kubelet's back-off. [`runner`] carries a plan out with an
//! [`podsnap_engine::Engine`] and the local image store.
//!
//! This crate runs Pods on one node. It must not store API objects or decide about snapshots:
//! the agent does that and calls it.

#![forbid(unsafe_code)]

pub mod engines;
pub mod network;
pub mod plan;
pub mod rootfs;
pub mod runner;

pub use plan::{PlanError, PodFields, Process};
pub use runner::{CapturedRootfs, PodRunner, RunningPod, RuntimeError};
