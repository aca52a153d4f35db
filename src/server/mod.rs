//! The running server: the accept loop around the HTTP surfaces, the metrics listener,
//! background flushing and maintenance, and the orderly shutdown.

mod connection;
mod lingering;
pub mod shutdown;
pub mod systemd;
mod threads;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use warp::Filter;

use self::threads::ConnectionThreads;
use crate::metrics::{BridgeLabels, BridgeSample};
use crate::service::Services;
use crate::store::{now_ms, Store};

/// How long requests and deliveries in flight may take to finish once shutdown begins.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
/// How long blocking work (a backup being written, a maintenance scan) may then take to
/// notice that it was cancelled. Both deadlines together stay within systemd's
/// `TimeoutStopSec`.
const BLOCKING_DEADLINE: Duration = Duration::from_secs(5);
/// How often writes that need no immediate durability (acknowledged deliveries, bridge
/// states) are flushed.
const BACKGROUND_FLUSH_INTERVAL: Duration = Duration::from_secs(1);
/// How often old queue entries and processed-transaction records are trimmed.
const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(3600);
/// How often the free space of the data directory's filesystem is examined (it also is
/// before every write that grows the database).
const DISK_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// Processed transaction IDs are remembered at least this long and at least this many.
const PROCESSED_TXN_RETENTION: Duration = Duration::from_secs(24 * 3600);
const PROCESSED_TXN_KEEP: usize = 10_000;
/// Records read per batch of the sweep of deleted bridges' rooms, and the pause between
/// batches: the write lock is held for one batch at a time (about a millisecond), so the
/// homeserver's transactions never wait long behind a deletion.
const SWEEP_BATCH: usize = 500;
const SWEEP_PAUSE: Duration = Duration::from_millis(2);

/// Binds the server's listener. Accepted connections inherit `TCP_NODELAY` from it on
/// Linux: websocket frames and small answers then leave at once instead of waiting for
/// the peer's delayed ACK.
pub fn bind(addr: std::net::SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// A server ready to run: its listener bound and its services built.
pub struct Started {
    listener: TcpListener,
    /// Where it listens (the port chosen when the config says 0).
    pub addr: std::net::SocketAddr,
    pub services: Arc<Services>,
}

/// Binds the listener of `config` and builds the services on `store`: everything
/// `asmux serve` does before serving, also what the tests start.
pub fn start(config: crate::config::Config, store: Arc<Store>) -> Result<Started> {
    let addr = config.listen_addr();
    let listener = bind(addr).with_context(|| format!("cannot listen on {addr}"))?;
    let addr = listener.local_addr()?;
    let services = Services::new(config, store)?;
    Ok(Started {
        listener,
        addr,
        services,
    })
}

impl Started {
    /// Tells systemd it is ready (and pings its watchdog, when asked to), then serves
    /// until `shutdown` completes (see [`run`]).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<()> {
        systemd::notify_ready();
        let services = self.services;
        if let Some(interval) = systemd::watchdog_interval() {
            services.tasks.spawn(systemd::watchdog(
                interval,
                services.store.clone(),
                services.tasks.clone(),
            ));
        }
        let stop = async {
            shutdown.await;
            systemd::notify_stopping();
        };
        run(self.listener, services, stop).await
    }
}

/// Serves on `listener` until `shutdown` completes; then closes websockets (1012), lets
/// requests and deliveries in flight finish, and flushes the store.
async fn run(
    listener: TcpListener,
    services: Arc<Services>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    serve_metrics(&services)?;
    services.delivery.start_queued();
    let tasks = &services.tasks;
    tasks.spawn(maintain(services.clone()));
    tasks.spawn(sweep_rooms(services.clone()));
    tasks.spawn(watch_disk(services.clone()));
    tasks.spawn(flush_periodically(services.store.clone()));
    let store = services.store.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            () = store.write_failure() => {
                tracing::error!(
                    "the database cannot write any more until it is reopened: stopping"
                );
            }
        }
    };
    let mut threads = ConnectionThreads::start().context("cannot start connection threads")?;
    serve(listener, services.clone(), stop, &mut threads).await;
    // What is still running now (sessions and connections past the deadline, timers,
    // reports) is cut. The tasks hold the store, and the data directory stays locked
    // until the last holder drops it.
    tasks.stop(BLOCKING_DEADLINE).await;
    threads.stop().await;
    // A failed write is final: sled refuses every write after an I/O error until the
    // database is reopened (and a flush could wait for data it will never write). The
    // service manager starts asmux again, which reopens it and releases the disk reserve
    // if the disk is what failed.
    if services.store.has_write_failed() {
        anyhow::bail!("stopped: the database could not write to disk");
    }
    services.store.flush().await.context("final flush failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Accepts connections until `stop` completes; then lets the requests and deliveries in
/// flight finish and the websockets close, until [`SHUTDOWN_DEADLINE`].
///
/// As `warp::serve` does, except that proxied client-server requests skip warp (see
/// [`crate::api::is_proxied`]), each request's pending upgrade is handed to the websocket
/// filter (see [`crate::api::PendingUpgrade`]), at most `mux.max_connections` are served
/// at once, a client has `mux.header_read_timeout_seconds` to send its headers, and each
/// connection is served on one of the connection threads (see [`threads`]).
async fn serve(
    listener: TcpListener,
    services: Arc<Services>,
    stop: impl Future<Output = ()>,
    threads: &mut ConnectionThreads,
) {
    let routes = hyper_util::service::TowerToHyperService::new(warp::service(crate::api::routes(
        services.clone(),
    )));
    // HTTP/1 only: bridges and homeservers speak it, and a connection is then served
    // from its first byte (hyper-util's auto-detection would wait for a silent client's
    // first bytes with no deadline).
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs_f64(
            services.config.mux.header_read_timeout_seconds,
        ));
    let connections = tokio_util::task::TaskTracker::new();
    let draining = tokio_util::sync::CancellationToken::new();
    let max_connections = services.config.mux.max_connections;
    let slots = Arc::new(tokio::sync::Semaphore::new(max_connections as usize));
    let mut full = false;
    let mut stop = std::pin::pin!(stop);
    loop {
        if slots.available_permits() == 0 && !full {
            tracing::warn!(
                max_connections,
                "connection limit reached: new connections wait until one ends"
            );
        }
        full = slots.available_permits() == 0;
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
            _ = &mut stop => break,
        };
        let stream = tokio::select! {
            // Handed over as a plain socket, to join the event loop of its thread.
            accepted = listener.accept() => match accepted.and_then(|(s, _)| s.into_std()) {
                Ok(stream) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let served = connection::serve(
            stream,
            http.clone(),
            routes.clone(),
            services.clone(),
            draining.clone(),
            slot,
        );
        services
            .tasks
            .spawn_on(threads.next(), connections.track_future(served));
    }
    drop(listener);
    draining.cancel();
    connections.close();
    let (connections, ()) = tokio::join!(
        tokio::time::timeout(SHUTDOWN_DEADLINE, connections.wait()),
        services.delivery.shutdown(SHUTDOWN_DEADLINE)
    );
    if connections.is_err() {
        tracing::warn!("requests still running at the shutdown deadline are cut");
    }
}

/// Starts the Prometheus listener when `metrics.enabled`.
fn serve_metrics(services: &Arc<Services>) -> Result<()> {
    if !services.config.metrics.enabled {
        return Ok(());
    }
    let addr: std::net::SocketAddr = services
        .config
        .metrics
        .listen
        .parse()
        .context("metrics.listen is not an address")?;
    let listener = bind(addr).with_context(|| format!("cannot listen on {addr} for metrics"))?;
    tracing::info!(%addr, "serving metrics");
    let for_scrape = services.clone();
    let route = warp::path!("metrics").and(warp::get()).then(move || {
        let services = for_scrape.clone();
        async move {
            let disk = services.store.reserve().space();
            let metrics = &services.metrics;
            (metrics.disk_available_bytes).set(i64::try_from(disk.available).unwrap_or(i64::MAX));
            metrics.disk_short.set(i64::from(disk.short));
            // Counting queues reads every queued entry: not on an async thread.
            let scanned = services.clone();
            let samples = (services.tasks)
                .blocking(move || bridge_samples(&scanned))
                .await
                .unwrap_or_default();
            warp::reply::with_header(
                services.metrics.render(&samples),
                "content-type",
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )
        }
    });
    services
        .tasks
        .spawn(warp::serve(route).incoming(listener).run());
    Ok(())
}

/// The per-bridge gauges of every bridge, read now.
fn bridge_samples(services: &Services) -> Vec<BridgeSample> {
    let now = now_ms();
    let bridges = services.store.bridges(None).unwrap_or_else(|e| {
        tracing::error!(error = %e, "cannot list bridges for the metrics");
        Vec::new()
    });
    bridges
        .iter()
        .map(|bridge| {
            let (queue_depth, oldest) = services.store.queue_stats(bridge.id).unwrap_or_default();
            BridgeSample {
                labels: BridgeLabels::new(&bridge.owner, &bridge.prefix),
                queue_depth,
                oldest_queued_age_seconds: oldest.map_or(0, |t| now.saturating_sub(t) / 1000),
                unreachable_since_seconds: services
                    .delivery
                    .unreachable_since(bridge.id)
                    .map_or(0, |t| t / 1000),
            }
        })
        .collect()
}

/// Flushes what was written without an explicit flush; cheap when nothing is dirty.
/// A failure is logged here and stops the server (see [`Store::write_failure`]).
async fn flush_periodically(store: Arc<Store>) {
    let mut interval = tokio::time::interval(BACKGROUND_FLUSH_INTERVAL);
    loop {
        interval.tick().await;
        if let Err(e) = store.flush().await {
            tracing::error!(error = %e, "background flush failed");
            return;
        }
    }
}

/// Keeps the disk reserve: released when the disk is short, written again when space is
/// back.
async fn watch_disk(services: Arc<Services>) {
    let mut interval = tokio::time::interval(DISK_CHECK_INTERVAL);
    loop {
        interval.tick().await;
        let store = services.store.clone();
        // Writing the reserve (megabytes, then fsync) must not hold an async thread.
        if let Some(Err(e)) = services
            .tasks
            .blocking(move || store.reserve().maintain())
            .await
        {
            tracing::debug!(error = %e, "cannot examine the disk");
        }
    }
}

/// Trims queues past `mux.queue_retention_days` and forgets old processed transactions.
/// Sweeps the rooms of deleted bridges (see [`crate::store::sweep`]) when a deletion asks
/// for it, and at start when a restart cut a sweep short.
async fn sweep_rooms(services: Arc<Services>) {
    loop {
        match services.store.sweep_wanted() {
            Ok(Some(wanted)) => sweep_once(&services, wanted).await,
            Ok(None) => {}
            Err(e) => tracing::error!(error = %e, "cannot read whether rooms are to be swept"),
        }
        tokio::select! {
            () = services.store.sweep_signal().notified() => {}
            () = tokio::time::sleep(MAINTENANCE_INTERVAL) => {}
        }
    }
}

async fn sweep_once(services: &Services, wanted: u64) {
    let started = std::time::Instant::now();
    let mut cursor = Some(crate::store::sweep::SweepCursor::default());
    let mut batches = 0u64;
    while let Some(at) = cursor {
        let store = services.store.clone();
        match services
            .tasks
            .blocking(move || store.sweep(at, SWEEP_BATCH))
            .await
        {
            Some(Ok(next)) => cursor = next,
            Some(Err(e)) => {
                tracing::error!(error = %e, "cannot sweep the rooms of deleted bridges");
                return;
            }
            None => return,
        }
        batches += 1;
        tokio::time::sleep(SWEEP_PAUSE).await;
    }
    match services.store.sweep_finished(wanted) {
        Ok(()) => tracing::info!(
            batches,
            seconds = started.elapsed().as_secs_f64(),
            "swept the rooms of deleted bridges"
        ),
        Err(e) => tracing::error!(error = %e, "cannot record the sweep of deleted bridges' rooms"),
    }
}

async fn maintain(services: Arc<Services>) {
    let retention = services.config.queue_retention();
    let mut interval = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        interval.tick().await;
        let now = now_ms();
        let store = services.store.clone();
        let reporter = services.delivery.reporter.clone();
        let result = services
            .tasks
            .blocking(move || {
                let queued = if retention.is_zero() {
                    0
                } else {
                    let before = now.saturating_sub(retention.as_millis() as u64);
                    store.trim_queues(before, |bridge, body| {
                        if let Ok(Some(bridge)) = store.bridge(bridge) {
                            reporter.dropped(
                                &bridge,
                                body,
                                "queued longer than queue_retention_days",
                            );
                        }
                    })?
                };
                let processed = store.trim_processed_transactions(
                    now.saturating_sub(PROCESSED_TXN_RETENTION.as_millis() as u64),
                    PROCESSED_TXN_KEEP,
                )?;
                Ok::<_, crate::store::StoreError>((queued, processed))
            })
            .await;
        match result {
            Some(Ok((0, 0))) | None => {}
            Some(Ok((queued, processed))) => {
                tracing::info!(queued, processed, "trimmed old records");
            }
            Some(Err(e)) => tracing::error!(error = %e, "maintenance failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn accepted_connections_inherit_nodelay() {
        let listener = super::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let client = tokio::net::TcpStream::connect(addr);
        let (accepted, client) = tokio::join!(listener.accept(), client);
        let (stream, _) = accepted.unwrap();
        drop(client);
        assert!(
            stream.nodelay().unwrap(),
            "accepted sockets keep TCP_NODELAY"
        );
    }
}
