//! Dorado runtime.

pub mod examples;
pub mod host;
pub mod tools;
pub mod api;
pub mod metrics;
pub mod node;
pub mod trace;
pub mod etcd_process;
pub mod store;
pub mod client;
pub mod runner;
pub mod replay;
