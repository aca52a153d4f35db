//! Homeserver -> bridge delivery: per-bridge workers draining durable queues, HTTP push,
//! and the websocket sessions of bridges behind NAT.

pub mod connection;
pub mod http_push;
pub mod hub;
pub mod session;
pub mod worker;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;
use tokio_util::task::TaskTracker;
use uuid::Uuid;

use crate::config::Config;
use crate::http_client::HttpClient;
use crate::matrix::Namespace;
use crate::metrics::Metrics;
use crate::secret::lowercase_alphanumeric;
use crate::service::reporting::Reporter;
use crate::store::{now_ms, Store};
use crate::sync::lock;
use crate::tasks::Tasks;
use hub::Hub;

/// Characters of the random part of delivery txn_ids: 62 bits of entropy.
const BOOT_ID_LEN: usize = 12;

/// The close reason sent to the socket of a bridge that is deleted.
pub const DELETED_REASON: &str = r#"{"command":"disconnect","status":"bridge_deleted"}"#;

/// The close reason sent to every websocket when asmux stops.
pub const SHUTDOWN_REASON: &str = r#"{"command":"disconnect","status":"server_shutting_down"}"#;

struct Worker {
    wake: Arc<Notify>,
    task: JoinHandle<()>,
}

/// The delivery service.
pub struct Delivery {
    pub store: Arc<Store>,
    pub hub: Hub,
    pub client: HttpClient,
    pub namespace: Namespace,
    pub max_pdu_age_ms: u64,
    pub ping_interval: Duration,
    /// Deadline of every write to a bridge's websocket.
    pub websocket_write_timeout: Duration,
    /// Protocol 3 acknowledgement timeouts: before the first miss, and after it.
    pub ack_timeouts: (Duration, Duration),
    /// The first and the longest pause between push attempts.
    pub push_retry_delay: Duration,
    pub push_retry_max_delay: Duration,
    pub push_timeout: Duration,
    pub reporter: Reporter,
    pub metrics: Arc<Metrics>,
    /// Where workers, sessions and reports run.
    pub tasks: Tasks,
    /// The websocket sessions, which shutdown lets close their sockets.
    sessions: TaskTracker,
    /// Bridge -> its worker.
    workers: Mutex<HashMap<Uuid, Worker>>,
    /// Bridge -> unix ms of its last completed delivery.
    last_delivery: Mutex<HashMap<Uuid, u64>>,
    /// Bridge -> unix ms since when it cannot be reached: its first failed push in a row,
    /// or its websocket's disconnect.
    unreachable_since: Mutex<HashMap<Uuid, u64>>,
    next_serial: AtomicU64,
    /// Random per process: with `next_delivery`, it makes every delivery's txn_id one no
    /// bridge has seen from asmux before, across restarts and restores.
    boot_id: String,
    next_delivery: AtomicU64,
    shutdown: watch::Sender<bool>,
}

impl Delivery {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        client: HttpClient,
        metrics: Arc<Metrics>,
        tasks: Tasks,
    ) -> Arc<Delivery> {
        Arc::new(Delivery {
            store,
            hub: Hub::default(),
            client: client.clone(),
            namespace: config.namespace(),
            max_pdu_age_ms: config.mux.max_pdu_age_seconds.saturating_mul(1000),
            ping_interval: Duration::from_secs(config.mux.websocket_ping_seconds),
            websocket_write_timeout: Duration::from_secs_f64(
                config.mux.websocket_write_timeout_seconds,
            ),
            ack_timeouts: (
                Duration::from_secs_f64(config.mux.websocket_ack_timeout_seconds),
                Duration::from_secs_f64(config.mux.websocket_ack_retry_timeout_seconds),
            ),
            push_retry_delay: Duration::from_secs_f64(config.mux.push_retry_delay_seconds),
            push_retry_max_delay: Duration::from_secs_f64(config.mux.push_retry_max_delay_seconds),
            push_timeout: Duration::from_secs_f64(config.mux.push_timeout_seconds),
            reporter: Reporter::new(config, client.clone(), tasks.clone()),
            metrics,
            tasks,
            sessions: TaskTracker::new(),
            workers: Mutex::default(),
            last_delivery: Mutex::default(),
            unreachable_since: Mutex::default(),
            next_serial: AtomicU64::new(1),
            boot_id: lowercase_alphanumeric(BOOT_ID_LEN).expose().to_owned(),
            next_delivery: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
        })
    }

    fn workers(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Worker>> {
        lock(&self.workers)
    }

    /// Starts workers for every bridge that has queued work (at start-up).
    pub fn start_queued(self: &Arc<Self>) {
        match self.store.queued_bridges() {
            Ok(ids) => {
                tracing::info!(bridges = ids.len(), "resuming queued deliveries");
                ids.into_iter().for_each(|id| self.wake(id));
            }
            Err(e) => tracing::error!(error = %e, "cannot list queued bridges"),
        }
    }

    /// Tells the bridge's worker there may be something to do, starting it if needed.
    pub fn wake(self: &Arc<Self>, id: Uuid) {
        if self.is_shutting_down() {
            return;
        }
        let mut workers = self.workers();
        if let Some(worker) = workers.get(&id).filter(|w| !w.task.is_finished()) {
            worker.wake.notify_one();
            return;
        }
        let wake = Arc::new(Notify::new());
        let task = self
            .tasks
            .spawn(worker::run(self.clone(), id, wake.clone()));
        workers.insert(id, Worker { wake, task });
    }

    /// Stops the bridge's worker and starts a fresh one: after its address changed or its
    /// queue was cleared, a pause between failed pushes must not hold it back.
    pub fn restart(self: &Arc<Self>, id: Uuid) {
        if let Some(worker) = self.workers().remove(&id) {
            worker.task.abort();
        }
        self.wake(id);
    }

    /// Stops everything for a deleted bridge: its worker and its websocket.
    pub fn forget(&self, id: Uuid) {
        if let Some(worker) = self.workers().remove(&id) {
            worker.task.abort();
        }
        if let Some(conn) = self.hub.get(id) {
            conn.close(1000, DELETED_REASON);
        }
        lock(&self.last_delivery).remove(&id);
        lock(&self.unreachable_since).remove(&id);
    }

    pub(crate) fn note_delivered(&self, id: Uuid) {
        lock(&self.last_delivery).insert(id, now_ms());
    }

    /// Unix ms of the bridge's last completed delivery.
    pub fn last_delivery(&self, id: Uuid) -> Option<u64> {
        lock(&self.last_delivery).get(&id).copied()
    }

    pub(crate) fn note_unreachable(&self, id: Uuid) {
        lock(&self.unreachable_since)
            .entry(id)
            .or_insert_with(now_ms);
    }

    pub(crate) fn note_reachable(&self, id: Uuid) {
        lock(&self.unreachable_since).remove(&id);
    }

    /// Unix ms since when the bridge cannot be reached, if it cannot.
    pub fn unreachable_since(&self, id: Uuid) -> Option<u64> {
        lock(&self.unreachable_since).get(&id).copied()
    }

    pub fn next_serial(&self) -> u64 {
        self.next_serial.fetch_add(1, Ordering::Relaxed)
    }

    /// A txn_id for a new delivery. Bridges drop a transaction whose id they have seen
    /// (mautrix-go remembers its last 128, mautrix-python every one since it started), so
    /// the homeserver's ids, which Synapse restarts at 1, are never passed through.
    pub fn new_txn_id(&self) -> String {
        let n = self.next_delivery.fetch_add(1, Ordering::Relaxed);
        format!("{}.{n}", self.boot_id)
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    /// Makes this instance inert: for the CLI working on the data directory, which must
    /// never deliver anything itself.
    pub fn disable(&self) {
        self.shutdown.send_replace(true);
    }

    /// Runs a websocket session (from the upgrade on); shutdown waits for it to close its
    /// socket.
    pub fn spawn_session(&self, session: impl std::future::Future<Output = ()> + Send + 'static) {
        // On the thread of the connection it was upgraded from, beside its socket.
        self.tasks.spawn_here(self.sessions.track_future(session));
    }

    /// Closes every websocket with 1012 and stops taking new batches. Deliveries in flight
    /// and the closing handshakes may finish until `deadline`; whatever is not
    /// acknowledged stays queued.
    pub async fn shutdown(&self, deadline: Duration) {
        self.shutdown.send_replace(true);
        for conn in self.hub.all() {
            conn.close(1012, SHUTDOWN_REASON);
        }
        let workers: Vec<JoinHandle<()>> = self.workers().drain().map(|(_, w)| w.task).collect();
        self.sessions.close();
        let all = futures_util::future::join(
            futures_util::future::join_all(workers),
            self.sessions.wait(),
        );
        if tokio::time::timeout(deadline, all).await.is_err() {
            tracing::warn!(
                "deliveries or websocket closes still running at the shutdown deadline; \
                 what they held stays queued"
            );
        }
    }
}
