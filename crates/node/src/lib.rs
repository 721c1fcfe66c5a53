//! Facts about this node, read from the host: the node fingerprint and the installed engines.
//!
//! This crate sits at the edge: it reads `/proc`, runs `runsc --version`, and turns what it
//! finds into the plain data types of `podsnap-api`, using `podsnap-core` for every decision
//! (machine series, which CPU flags count). Reads go through [`HostRoot`] so tests run on a
//! fake `/proc` tree. It must not load GPU libraries: GPU facts come from
//! `/proc/driver/nvidia`, so nodes without a GPU never touch libcuda.

#![forbid(unsafe_code)]

pub mod fingerprint;
pub mod runsc;

pub use fingerprint::{EngineKind, HostRoot, ProbeError, probe_fingerprint};
pub use runsc::{RunscInfo, probe_runsc};
