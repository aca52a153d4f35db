//! Delivery by HTTP push (spec 4.1): PUT the transaction to the bridge, retrying with
//! back-off, in order, one at a time.

use std::time::Duration;

use percent_encoding::utf8_percent_encode;

use crate::http_client::{full_body, HttpClient, URL_COMPONENT};
use crate::matrix::BridgeTransaction;
use crate::store::Bridge;

/// How long one PUT may take.
pub const PUSH_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts for a delivery with PDUs; without PDUs (ephemeral, to-device, keys) only
/// `ATTEMPTS_WITHOUT_PDUS`, since those go stale quickly.
pub const ATTEMPTS_WITH_PDUS: u32 = 10;
pub const ATTEMPTS_WITHOUT_PDUS: u32 = 2;
/// Each pause between attempts is this much longer than the one before.
pub const BACKOFF_FACTOR: f64 = 1.5;

/// How a push ended.
#[derive(Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Delivered,
    /// Every attempt failed; the last failure.
    GaveUp(String),
}

/// Pushes `txn` to `bridge`, retrying as the spec says.
/// `first_backoff` is the first pause between attempts.
pub async fn push(
    client: &HttpClient,
    bridge: &Bridge,
    txn: &BridgeTransaction,
    first_backoff: Duration,
) -> PushOutcome {
    let body = txn.to_json();
    let attempts = if txn.events.is_empty() {
        ATTEMPTS_WITHOUT_PDUS
    } else {
        ATTEMPTS_WITH_PDUS
    };
    let url = format!(
        "{}/_matrix/app/v1/transactions/{}?access_token={}",
        bridge.address.trim_end_matches('/'),
        utf8_percent_encode(&txn.txn_id, URL_COMPONENT),
        utf8_percent_encode(bridge.hs_token.expose(), URL_COMPONENT),
    );
    let mut backoff = first_backoff;
    let mut last_error = String::new();
    for attempt in 1..=attempts {
        match put(client, bridge, &url, &body).await {
            Ok(()) => return PushOutcome::Delivered,
            Err(e) => {
                tracing::warn!(bridge = %bridge.name(), txn_id = %txn.txn_id, attempt, error = %e, "push failed");
                last_error = e;
            }
        }
        if attempt < attempts {
            tokio::time::sleep(backoff).await;
            backoff = backoff.mul_f64(BACKOFF_FACTOR);
        }
    }
    PushOutcome::GaveUp(last_error)
}

async fn put(client: &HttpClient, bridge: &Bridge, url: &str, body: &[u8]) -> Result<(), String> {
    let request = http::Request::put(url)
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", bridge.hs_token.expose()),
        )
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full_body(body.to_vec()))
        .map_err(|e| e.to_string())?;
    let response = client
        .send_buffered(request, PUSH_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if response.status.is_success() {
        Ok(())
    } else {
        Err(format!("bridge answered {}", response.status))
    }
}
