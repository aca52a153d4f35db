//! The test harness, by role: [`server`] runs asmux (in this process or as the real
//! binary) and talks HTTP to it; [`stub`] is the recording stand-in for the homeserver
//! and push bridges; [`websocket`] is a frame-by-frame bridge client and [`mautrix_go`]
//! a client that behaves as mautrix-go's library does.

pub mod mautrix_go;
pub mod postgres;
pub mod server;
pub mod stub;
pub mod websocket;

pub use server::*;
pub use stub::*;
pub use websocket::*;

use serde_json::Value;

pub const DOMAIN: &str = "example.test";
pub const SHARED_SECRET: &str = "root-secret-for-tests-0123456789";
pub const AS_TOKEN: &str = "asmux-as-token-for-tests";
pub const HS_TOKEN: &str = "asmux-hs-token-for-tests";

/// The body of a Synapse fixture.
pub fn fixture(name: &str) -> Value {
    let path = format!(
        "{}/tests/fixtures/synapse-1.163/{name}",
        env!("CARGO_MANIFEST_DIR")
    );
    let value: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    value["body"].clone()
}

/// Event IDs of a list of events.
pub fn event_ids(events: &[Value]) -> Vec<String> {
    events
        .iter()
        .map(|e| e["event_id"].as_str().unwrap_or("").to_owned())
        .collect()
}
