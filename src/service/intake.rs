//! Accepting homeserver transactions (spec 3.1): recognise retries, route, write the
//! sub-transactions and the processed-transaction record atomically, make them durable,
//! then wake the bridges' workers. Only then may the homeserver get its 200.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;
use uuid::Uuid;

use crate::config::Config;
use crate::error::Error;
use crate::matrix::HomeserverTransaction;
use crate::metrics::{BridgeTypeLabels, DropLabels, Metrics, TypeLabels};
use crate::service::delivery::Delivery;
use crate::service::reporting::Checkpoint;
use crate::service::routing::Router;
use crate::store::{now_ms, Store, TransactionCommit, TxnRecord};

/// The 200 body of a processed transaction.
#[derive(Debug, Serialize)]
pub struct SentTo {
    #[serde(rename = "com.beeper.asmux.sent_to")]
    pub sent_to: BTreeMap<Uuid, &'static str>,
    #[serde(rename = "com.beeper.asmux.synchronous")]
    pub synchronous: bool,
}

/// What became of a transaction.
#[derive(Debug)]
pub enum Accepted {
    /// A retry of a transaction already processed: nothing was queued.
    Duplicate,
    Processed(SentTo),
}

pub struct Intake {
    store: Arc<Store>,
    delivery: Arc<Delivery>,
    router: Router,
    metrics: Arc<Metrics>,
    /// The homeserver sends one transaction at a time; processing them one at a time too
    /// keeps every bridge's queue in homeserver order.
    order: tokio::sync::Mutex<()>,
}

impl Intake {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        delivery: Arc<Delivery>,
        metrics: Arc<Metrics>,
    ) -> Intake {
        Intake {
            store,
            delivery,
            metrics,
            router: Router {
                namespace: config.namespace(),
                filter: config.mux.event_filter,
            },
            order: tokio::sync::Mutex::new(()),
        }
    }

    /// Every error is a store failure, answered 500 so that the homeserver retries.
    pub async fn accept(
        &self,
        txn_id: &str,
        txn: HomeserverTransaction,
    ) -> Result<Accepted, Error> {
        let result = self.process(txn_id, txn).await;
        if result.is_err() {
            self.metrics.failed_transactions.inc();
        }
        result
    }

    async fn process(&self, txn_id: &str, txn: HomeserverTransaction) -> Result<Accepted, Error> {
        let order = self.order.lock().await;
        // Routing writes nothing, so it may run before the retry check: it reads every
        // event once and collects the PDU event IDs the check needs.
        let routed = self.router.route(txn_id, &txn, self.store.as_ref())?;
        if self.is_retry(txn_id, &txn, &routed.event_ids)? {
            tracing::debug!(txn_id, "transaction already processed");
            // Its first attempt may have been answered 500 after a failed flush.
            self.store.flush().await?;
            return Ok(Accepted::Duplicate);
        }
        self.count(&routed);
        let mut sent_to = BTreeMap::new();
        let mut entries = Vec::new();
        for (id, sub) in &routed.transactions {
            let bridge = &routed.bridges[id];
            if bridge.push && bridge.address.is_empty() {
                sent_to.insert(*id, "no-address");
            } else {
                sent_to.insert(*id, "ok");
                entries.push((*id, sub.to_json()));
            }
        }
        let commit = TransactionCommit {
            txn_id,
            record: Some(TxnRecord {
                at_ms: now_ms(),
                event_ids: routed.event_ids.clone(),
            }),
            memberships: routed.memberships.clone(),
            entries,
        };
        self.store.commit_transaction(&commit).map_err(|e| {
            tracing::error!(txn_id, error = %e, "cannot queue transaction; the homeserver will retry");
            Error::Internal
        })?;
        drop(order);
        self.store.flush().await.map_err(|e| {
            tracing::error!(txn_id, error = %e, "cannot flush transaction; the homeserver will retry");
            Error::Internal
        })?;
        for (id, _) in &commit.entries {
            self.delivery.wake(*id);
        }
        for (id, sub) in &routed.transactions {
            let bridge = &routed.bridges[id];
            self.delivery
                .reporter
                .event_checkpoints(bridge, &sub.events, Checkpoint::RECEIVED);
        }
        Ok(Accepted::Processed(SentTo {
            sent_to,
            synchronous: true,
        }))
    }

    fn count(&self, routed: &crate::service::routing::Routed) {
        for (kind, reason) in &routed.dropped {
            let labels = DropLabels {
                r#type: kind.clone(),
                reason: reason.as_str().to_owned(),
            };
            self.metrics.dropped_events.get_or_create(&labels).inc();
        }
        for kind in &routed.received {
            self.metrics
                .received_events
                .get_or_create(&TypeLabels {
                    r#type: kind.clone(),
                })
                .inc();
        }
        for (id, kind) in &routed.accepted {
            let bridge = &routed.bridges[id];
            let labels = BridgeTypeLabels {
                owner: bridge.owner.clone(),
                bridge: bridge.prefix.clone(),
                r#type: kind.clone(),
            };
            self.metrics.accepted_events.get_or_create(&labels).inc();
        }
    }

    /// A repeated txn ID is a retry only if all its PDUs were in the earlier transaction
    /// and it has no to-device events: Synapse rebuilds retried bodies and reuses IDs
    /// after its own restart.
    fn is_retry(
        &self,
        txn_id: &str,
        txn: &HomeserverTransaction,
        event_ids: &[String],
    ) -> Result<bool, Error> {
        if !txn.to_device.is_empty() {
            return Ok(false);
        }
        let Some(previous) = self.store.processed_transaction(txn_id)? else {
            return Ok(false);
        };
        Ok(event_ids.len() == txn.events.len()
            && event_ids.iter().all(|id| previous.event_ids.contains(id)))
    }
}
