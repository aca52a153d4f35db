//! Delivery by HTTP push (spec 4.1): one PUT of a transaction to the bridge. The worker
//! retries a failed push with [`Backoff`] until it succeeds or the entries age out.

use std::time::Duration;

use percent_encoding::utf8_percent_encode;

use crate::http_client::{full_body, HttpClient, URL_COMPONENT};
use crate::matrix::BridgeTransaction;
use crate::store::Bridge;

/// Each pause between attempts is this much longer than the one before, up to the cap.
pub const BACKOFF_FACTOR: f64 = 1.5;

/// PUTs `txn` to `bridge` once, waiting at most `timeout`; the failure as text.
pub async fn push(
    client: &HttpClient,
    timeout: Duration,
    bridge: &Bridge,
    txn: &BridgeTransaction,
) -> Result<(), String> {
    let url = format!(
        "{}/_matrix/app/v1/transactions/{}?access_token={}",
        bridge.address.trim_end_matches('/'),
        utf8_percent_encode(&txn.txn_id, URL_COMPONENT),
        utf8_percent_encode(bridge.hs_token.expose(), URL_COMPONENT),
    );
    let request = http::Request::put(url)
        .header(
            http::header::AUTHORIZATION,
            format!("Bearer {}", bridge.hs_token.expose()),
        )
        .header(http::header::CONTENT_TYPE, "application/json")
        .body(full_body(txn.to_json()))
        .map_err(|e| e.to_string())?;
    let response = client
        .send_buffered(request, timeout)
        .await
        .map_err(|e| e.to_string())?;
    if response.status.is_success() {
        Ok(())
    } else {
        Err(format!("bridge answered {}", response.status))
    }
}

/// The pauses between push attempts: `first`, then [`BACKOFF_FACTOR`] times longer each
/// time, never longer than `cap`.
#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    cap: Duration,
    next: Duration,
    /// Failed attempts since the last success.
    pub failures: u32,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Backoff {
        Backoff {
            first,
            cap,
            next: first.min(cap),
            failures: 0,
        }
    }

    /// Records a failure; the pause before the next attempt.
    pub fn failed(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let pause = self.next;
        self.next = self.next.mul_f64(BACKOFF_FACTOR).min(self.cap);
        pause
    }

    pub fn succeeded(&mut self) {
        *self = Backoff::new(self.first, self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(3));
        let pauses: Vec<f64> = (0..5).map(|_| backoff.failed().as_secs_f64()).collect();
        assert_eq!(pauses, [1.0, 1.5, 2.25, 3.0, 3.0]);
        assert_eq!(backoff.failures, 5);
        backoff.succeeded();
        assert_eq!(backoff.failures, 0);
        assert_eq!(backoff.failed(), Duration::from_secs(1));
    }
}
