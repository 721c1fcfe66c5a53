//! podsnap's node agent (embedded mode): an object store, a local HTTP API on a Unix socket,
//! and the controller that runs the Pods it holds.
#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod controller;
pub mod images;
pub mod in_place;
pub mod metrics;
pub mod progress;
pub mod relay;
pub mod snapshots;
pub mod store;
