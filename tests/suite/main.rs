//! The test suite in one binary (one link instead of one per file). Each module is the
//! tests of one subject; [`common`] is their harness. Tests that need more than this
//! machine's loopback (root, PostgreSQL, Synapse, the packages `scripts/package` builds,
//! qemu) are marked `#[ignore = "needs ..."]`: `cargo test` reports them as not run, and
//! `./scripts/test` runs them too (`-- --include-ignored`).

mod common;

mod arm64;
mod backup;
mod bridge_requests;
mod cli;
mod crash;
mod disk;
mod e2e;
mod fuzz;
mod import;
mod isolation;
mod layers;
mod management;
mod metrics;
mod monitoring;
mod package;
mod proxy;
mod robustness;
mod stalls;
mod systemd;
mod transactions;
mod websocket;
