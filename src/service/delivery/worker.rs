//! One task per bridge with queued work: takes up to [`MAX_BATCH`] queued
//! sub-transactions, merges them into one delivery under a txn_id of asmux's own,
//! delivers it by push or websocket, and removes the entries only once acknowledged (or
//! given up). A resend carries the same entries under the same txn_id.
//!
//! A busy bridge gets at most one delivery per [`MERGE_WINDOW`] unless its queue fills
//! whole batches: what arrives meanwhile joins the next delivery instead of making one of
//! its own. Each delivery costs a frame, an ack, store writes and several task wake-ups
//! whatever its size, so under load this is most of the fan-out's throughput. A bridge
//! that was idle gets its first delivery at once.

use std::sync::Arc;
use std::time::Duration;

use uuid::Uuid;

use super::connection::RequestError;
use super::http_push::{push, Backoff};
use super::Delivery;
use crate::matrix::{BridgeTransaction, EventMeta};
use crate::metrics::BridgeLabels;
use crate::service::reporting::Checkpoint;
use crate::store::{now_ms, Bridge, InFlight, QueuedEntry};

/// Queued sub-transactions merged into one delivery at most.
pub const MAX_BATCH: usize = 10;
/// Consecutive unacknowledged deliveries after which the socket is closed with 4002.
pub const MAX_ACK_TIMEOUTS: u32 = 7;
/// The shortest time between the starts of two deliveries that are not full batches.
pub const MERGE_WINDOW: Duration = Duration::from_millis(5);
/// Pause after a store error before trying again.
const STORE_RETRY: Duration = Duration::from_secs(1);

/// What became of one delivery attempt.
enum Outcome {
    /// Acknowledged: remove the entries.
    Delivered,
    /// Given up for good (protocol 2 only): remove the entries too.
    GaveUp,
    /// Not delivered; keep the entries and wait for a wake-up (a connection, an address).
    Wait,
    /// Not delivered; keep the entries and try again after this pause.
    Retry(Duration),
}

/// Acknowledgement bookkeeping for the bridge's current websocket.
#[derive(Default)]
struct AckState {
    serial: u64,
    timeouts: u32,
}

/// One bridge's worker.
struct Worker {
    delivery: Arc<Delivery>,
    id: Uuid,
    acks: AckState,
    backoff: Backoff,
    /// The delivery being attempted, resent as it is until acknowledged.
    in_flight: Option<InFlight>,
    /// Whether the last delivery held as many entries as a delivery may.
    last_batch_full: bool,
}

pub async fn run(delivery: Arc<Delivery>, id: Uuid, wake: Arc<tokio::sync::Notify>) {
    let mut shutdown = delivery.shutdown_signal();
    // A delivery an earlier run (or an earlier process) began and did not finish.
    let in_flight = delivery.store.in_flight(id).unwrap_or_else(|e| {
        tracing::error!(bridge = %id, error = %e, "cannot read the delivery in flight");
        None
    });
    let mut worker = Worker {
        backoff: Backoff::new(delivery.push_retry_delay, delivery.push_retry_max_delay),
        delivery,
        id,
        acks: AckState::default(),
        in_flight,
        last_batch_full: false,
    };
    loop {
        if *shutdown.borrow() {
            return;
        }
        let started = tokio::time::Instant::now();
        match worker.step().await {
            None => return,
            // More may be queued: go again, after the merge window unless there is a
            // backlog.
            Some(Outcome::Delivered | Outcome::GaveUp) => {
                if !worker.last_batch_full {
                    tokio::select! {
                        _ = tokio::time::sleep_until(started + MERGE_WINDOW) => {}
                        _ = shutdown.changed() => {}
                    }
                }
            }
            Some(Outcome::Wait) => {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = shutdown.changed() => {}
                }
            }
            // New work does not cut the pause short: a bridge that is down would get one
            // attempt per homeserver transaction. A new address restarts the worker.
            Some(Outcome::Retry(pause)) => {
                tokio::select! {
                    _ = tokio::time::sleep(pause) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
}

impl Worker {
    /// Attempts the next delivery; `None` when the bridge is gone.
    async fn step(&mut self) -> Option<Outcome> {
        let delivery = self.delivery.clone();
        let bridge = match delivery.store.bridge(self.id) {
            Ok(Some(bridge)) => bridge,
            Ok(None) => return None,
            Err(e) => return Some(store_trouble(self.id, "cannot read bridge", e).await),
        };
        // A delivery begins only when it can be attempted, so that the entries queued
        // meanwhile still join it.
        let reachable = if bridge.push {
            !bridge.address.is_empty()
        } else {
            delivery.hub.get(self.id).is_some()
        };
        if !reachable {
            return Some(Outcome::Wait);
        }
        let through = self.in_flight.as_ref().map(|f| f.last_sequence);
        let batch = match delivery.store.queue_batch(self.id, MAX_BATCH, through) {
            Ok(batch) => batch,
            Err(e) => return Some(store_trouble(self.id, "cannot read queue", e).await),
        };
        self.last_batch_full = batch.len() == MAX_BATCH;
        let Some(last) = batch.last() else {
            // Nothing left of a recorded delivery: it was acknowledged.
            return Some(if self.in_flight.take().is_some() {
                Outcome::Delivered
            } else {
                Outcome::Wait
            });
        };
        let mut txn = merge(&delivery, &bridge, &batch);
        txn.txn_id = self.txn_id(&bridge, last.sequence());
        let outcome = if txn.is_empty() {
            Outcome::Delivered
        } else if bridge.push {
            deliver_push(&delivery, &bridge, &txn, &mut self.backoff).await
        } else {
            deliver_websocket(&delivery, &bridge, &txn, &mut self.acks).await
        };
        if let Outcome::Wait | Outcome::Retry(_) = outcome {
            return Some(outcome);
        }
        if let Err(e) = delivery.store.remove_queued(&batch) {
            tracing::error!(bridge = %bridge.name(), error = %e, "cannot remove delivered entries");
        }
        self.in_flight = None;
        let counter = match outcome {
            Outcome::Delivered => &delivery.metrics.successful_events,
            _ => &delivery.metrics.failed_events,
        };
        counter
            .get_or_create(&BridgeLabels::new(&bridge.owner, &bridge.prefix))
            .inc_by(txn.events.len() as u64);
        delivery.note_delivered(self.id);
        Some(outcome)
    }

    /// The txn_id of the delivery in flight, or of a new one ending at `last_sequence`
    /// (recorded, so that a resend after a restart carries the same entries and id).
    fn txn_id(&mut self, bridge: &Bridge, last_sequence: u64) -> String {
        if let Some(f) = &self.in_flight {
            return f.txn_id.clone();
        }
        let f = InFlight {
            txn_id: self.delivery.new_txn_id(),
            last_sequence,
        };
        if let Err(e) = self.delivery.store.set_in_flight(self.id, &f) {
            tracing::warn!(bridge = %bridge.name(), error = %e, "cannot record the delivery in flight");
        }
        self.in_flight.insert(f).txn_id.clone()
    }
}

/// Logs a store failure and pauses before the worker tries again.
async fn store_trouble(id: Uuid, what: &str, e: crate::store::StoreError) -> Outcome {
    tracing::error!(bridge = %id, error = %e, "{what}");
    tokio::time::sleep(STORE_RETRY).await;
    Outcome::Wait
}

/// Merges the batch, dropping PDUs the owner sent that waited too long: by now the
/// owner has seen them fail to bridge and may have resent them.
fn merge(delivery: &Delivery, bridge: &Bridge, batch: &[QueuedEntry]) -> BridgeTransaction {
    let owner = delivery.namespace.user_id(&bridge.owner);
    let max_age = delivery.max_pdu_age_ms;
    let cutoff = now_ms().saturating_sub(max_age) as i64;
    let mut merged = BridgeTransaction::default();
    for entry in batch {
        let mut txn: BridgeTransaction = match serde_json::from_slice(&entry.body) {
            Ok(txn) => txn,
            Err(e) => {
                tracing::error!(bridge = %bridge.name(), error = %e, "dropping unreadable queue entry");
                continue;
            }
        };
        if max_age > 0 {
            txn.events.retain(|raw| {
                let expired = EventMeta::parse(raw).is_some_and(|meta| {
                    meta.sender.as_deref() == Some(owner.as_str())
                        && !meta.is_double_puppeted()
                        && meta.origin_server_ts().is_some_and(|ts| ts < cutoff)
                });
                if expired {
                    tracing::info!(bridge = %bridge.name(), "dropping expired event from the owner");
                    let events = std::slice::from_ref(raw);
                    delivery.reporter.event_checkpoints(bridge, events, Checkpoint::bridge("TIMEOUT", 0, Some("event expired in the queue")));
                }
                !expired
            });
        }
        merged.merge(txn);
    }
    merged
}

/// One push attempt. A push bridge is never given up on for being unreachable (as
/// Synapse never gives up on an appservice): a bridge restarted or upgraded for a while
/// gets everything once it is back, and the entries only go when they age out.
async fn deliver_push(
    delivery: &Delivery,
    bridge: &Bridge,
    txn: &BridgeTransaction,
    backoff: &mut Backoff,
) -> Outcome {
    match push(&delivery.client, delivery.push_timeout, bridge, txn).await {
        Ok(()) => {
            backoff.succeeded();
            delivery.note_reachable(bridge.id);
            Outcome::Delivered
        }
        Err(error) => {
            let pause = backoff.failed();
            delivery.note_unreachable(bridge.id);
            tracing::warn!(bridge = %bridge.name(), txn_id = %txn.txn_id, attempt = backoff.failures, %error, retry_in = ?pause, "push failed");
            delivery.reporter.event_checkpoints(
                bridge,
                &txn.events,
                Checkpoint::bridge("WILL_RETRY", backoff.failures, Some(&error)),
            );
            Outcome::Retry(pause)
        }
    }
}

async fn deliver_websocket(
    delivery: &Delivery,
    bridge: &Bridge,
    txn: &BridgeTransaction,
    acks: &mut AckState,
) -> Outcome {
    let Some(conn) = delivery.hub.get(bridge.id) else {
        return Outcome::Wait;
    };
    if acks.serial != conn.serial {
        *acks = AckState {
            serial: conn.serial,
            timeouts: 0,
        };
    }
    let json = txn.to_json();
    let fields = format!(
        "{{\"status\":\"ok\",{}",
        json.get(1..)
            .map(String::from_utf8_lossy)
            .unwrap_or_default()
    );
    if conn.protocol < 2 {
        // Protocol 1 has no acknowledgements: sent is delivered.
        let frame = super::connection::with_header("transaction", None, &fields);
        return if conn.send_text(frame).await {
            Outcome::Delivered
        } else {
            Outcome::Wait
        };
    }
    loop {
        // Protocol 2 always waits the longer timeout.
        let (first, after) = delivery.ack_timeouts;
        let timeout = if conn.protocol == 3 && acks.timeouts == 0 {
            first
        } else {
            after
        };
        match conn.request_raw("transaction", &fields, timeout).await {
            Ok(_) => {
                acks.timeouts = 0;
                return Outcome::Delivered;
            }
            Err(RequestError::Closed) => return Outcome::Wait,
            Err(RequestError::Timeout) if conn.protocol == 2 => {
                tracing::warn!(bridge = %bridge.name(), txn_id = %txn.txn_id, "not acknowledged, dropping (protocol 2)");
                return Outcome::GaveUp;
            }
            Err(RequestError::Timeout | RequestError::Refused(_)) => {
                acks.timeouts += 1;
                tracing::warn!(bridge = %bridge.name(), txn_id = %txn.txn_id, timeouts = acks.timeouts, "transaction not acknowledged");
                if acks.timeouts >= MAX_ACK_TIMEOUTS {
                    conn.close(
                        4002,
                        r#"{"command":"disconnect","status":"transactions_not_acknowledged"}"#,
                    );
                    return Outcome::Wait;
                }
                // Resend the same delivery: bridges deduplicate by txn_id.
            }
        }
    }
}
