//! The request counters a bridge connection has used, kept by the connection: its next
//! requests of the same kind count without the metric families' shared lock, label
//! strings and hashing (the biggest asmux symbol in the proxy's profile before).

use std::sync::{Arc, Mutex};

use http::Method;
use uuid::Uuid;

use crate::metrics::{endpoint, Metrics, RequestCounters, RequestLabels};
use crate::store::Bridge;

/// Kinds of request remembered per connection; a bridge's connection mostly repeats a few.
const REMEMBERED: usize = 16;

struct Remembered {
    bridge: Uuid,
    method: Method,
    endpoint: String,
    counters: RequestCounters,
}

/// The counters one connection's requests used, most recent first.
#[derive(Clone, Default)]
pub struct CounterMemo(Arc<Mutex<Vec<Remembered>>>);

impl CounterMemo {
    /// The counters of `bridge`'s `method` request to `path` (decoded).
    pub fn counters(
        &self,
        metrics: &Metrics,
        bridge: &Bridge,
        method: &Method,
        path: &str,
    ) -> RequestCounters {
        let endpoint = endpoint(path);
        // Only this connection's requests, one at a time, take the lock.
        let mut memo = crate::sync::lock(&self.0);
        let found = memo
            .iter()
            .position(|r| r.bridge == bridge.id && r.method == method && r.endpoint == endpoint);
        let remembered = match found {
            Some(i) => memo.remove(i),
            None => {
                let counters = metrics.request_counters(&RequestLabels {
                    bridge: bridge.name(),
                    method: method.to_string(),
                    endpoint: endpoint.clone(),
                });
                memo.truncate(REMEMBERED - 1);
                Remembered {
                    bridge: bridge.id,
                    method: method.clone(),
                    endpoint,
                    counters,
                }
            }
        };
        let counters = remembered.counters.clone();
        memo.insert(0, remembered);
        counters
    }
}
