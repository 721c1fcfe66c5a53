//! The pure core of podsnap: the decisions, with no I/O.
//!
//! - [`distill`]: the distilled Pod spec and its hash (does a snapshot fit this Pod?);
//! - [`matching`]: label selectors and the policy that governs a Pod;
//! - [`compat`]: node fingerprints compared (does a snapshot fit this node?);
//! - [`series`], [`cpu_features`]: CPU model to machine series, and the flags that count;
//! - [`select`]: which snapshot a new Pod restores from, or why it starts cold;
//! - [`retention`]: which snapshots to delete, and why.
//!
//! Everything here is a function of its arguments. It must not read files, clocks, the
//! network, Kubernetes or the kernel: drivers gather the facts and pass them in, which is what
//! lets the embedded agent and the cluster agent share these rules and tests cover them fully.

#![forbid(unsafe_code)]

pub mod compat;
pub mod cpu_features;
pub mod distill;
pub mod matching;
pub mod retention;
pub mod select;
pub mod series;

pub use compat::{Mismatch, check_compatibility};
pub use distill::{DistillError, DistilledSpec, SpecHash};
pub use matching::{PolicyMatch, governing_policy, selector_matches};
pub use retention::{Prune, PruneReason, plan_retention};
pub use select::{Candidate, NoSnapshot, PodFacts, Rejection, Selection, select_snapshot};
pub use series::machine_series;
