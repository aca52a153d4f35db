//! The running server: the accept loop around the HTTP surfaces, the metrics listener,
//! background flushing and maintenance, and the orderly shutdown.

pub mod shutdown;
pub mod systemd;

use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use warp::Filter;

use crate::metrics::{BridgeLabels, BridgeSample};
use crate::service::Services;
use crate::store::{now_ms, Store};

/// How long deliveries in flight may take to finish once shutdown begins.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);
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

/// Serves on `listener` until `shutdown` completes; then closes websockets (1012), lets
/// requests and deliveries in flight finish, and flushes the store.
pub async fn run(
    listener: TcpListener,
    services: Arc<Services>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    services.delivery.start_queued();
    let metrics_server = serve_metrics(&services)?;
    let maintenance = tokio::spawn(maintain(services.clone()));
    let disk_watch = tokio::spawn(watch_disk(services.store.clone()));
    let store_failed = Arc::new(tokio::sync::Notify::new());
    let flusher = tokio::spawn(flush_periodically(
        services.store.clone(),
        store_failed.clone(),
    ));
    let delivery = services.delivery.clone();
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            () = store_failed.notified() => {}
        }
        delivery.shutdown(SHUTDOWN_DEADLINE).await;
    };
    serve(listener, services.clone(), stop).await;
    // Wait for the background tasks to be gone: they hold the store, and the data
    // directory stays locked until the last holder drops it.
    for task in [
        Some(maintenance),
        Some(disk_watch),
        Some(flusher),
        metrics_server,
    ]
    .into_iter()
    .flatten()
    {
        task.abort();
        let _ = task.await;
    }
    services.store.flush().await.context("final flush failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// Who answers a request: the proxy directly, or the warp routes.
enum Target<R> {
    Proxy(Arc<Services>),
    Routes(R),
}

/// Accepts connections until `stop` completes, then waits for the requests in flight.
/// As `warp::serve` does, except that proxied client-server requests skip warp (see
/// [`crate::api::is_proxied`]) and each request's pending upgrade is handed to the
/// websocket filter (see [`crate::api::PendingUpgrade`]).
async fn serve(listener: TcpListener, services: Arc<Services>, stop: impl Future<Output = ()>) {
    let routes = hyper_util::service::TowerToHyperService::new(warp::service(crate::api::routes(
        services.clone(),
    )));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut stop = std::pin::pin!(stop);
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors, or a connection reset before it was accepted.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            _ = &mut stop => break,
        };
        let (routes, services) = (routes.clone(), services.clone());
        let handler = hyper::service::service_fn(
            move |mut request: hyper::Request<hyper::body::Incoming>| {
                // Cloning the warp routes costs more than a proxied request's own work:
                // only the requests that use them pay for it.
                let target = if crate::api::is_proxied(request.uri().path()) {
                    Target::Proxy(services.clone())
                } else {
                    Target::Routes(routes.clone())
                };
                async move {
                    match target {
                        Target::Proxy(services) => {
                            Ok::<_, Infallible>(crate::api::proxy(services, request).await)
                        }
                        Target::Routes(routes) => {
                            if let Some(pending) =
                                crate::api::PendingUpgrade::from_request(&mut request)
                            {
                                request.extensions_mut().insert(pending);
                            }
                            let response = hyper::service::Service::call(&routes, request).await?;
                            Ok(crate::api::boxed(response))
                        }
                    }
                }
            },
        );
        let connection = graceful.watch(
            hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new())
                .serve_connection_with_upgrades(hyper_util::rt::TokioIo::new(stream), handler)
                .into_owned(),
        );
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Starts the Prometheus listener when `metrics.enabled`.
fn serve_metrics(services: &Arc<Services>) -> Result<Option<tokio::task::JoinHandle<()>>> {
    if !services.config.metrics.enabled {
        return Ok(None);
    }
    let addr: std::net::SocketAddr = services
        .config
        .metrics
        .listen
        .parse()
        .context("metrics.listen is not an address")?;
    let listener = bind(addr).with_context(|| format!("cannot listen on {addr} for metrics"))?;
    tracing::info!(%addr, "serving metrics");
    let services = services.clone();
    let route = warp::path!("metrics").and(warp::get()).map(move || {
        let disk = services.store.reserve().space();
        let metrics = &services.metrics;
        (metrics.disk_available_bytes).set(i64::try_from(disk.available).unwrap_or(i64::MAX));
        metrics.disk_short.set(i64::from(disk.short));
        warp::reply::with_header(
            services.metrics.render(&bridge_samples(&services)),
            "content-type",
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )
    });
    Ok(Some(tokio::spawn(
        warp::serve(route).incoming(listener).run(),
    )))
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
///
/// A failed flush is final: sled refuses every write after an I/O error until the
/// database is reopened, so the server stops (`failed` wakes the shutdown) and `run`
/// returns the error; the service manager starts asmux again, which releases the disk
/// reserve if the disk is what failed.
async fn flush_periodically(store: Arc<Store>, failed: Arc<tokio::sync::Notify>) {
    let mut interval = tokio::time::interval(BACKGROUND_FLUSH_INTERVAL);
    loop {
        interval.tick().await;
        if let Err(e) = store.flush().await {
            tracing::error!(
                error = %e,
                "the database cannot write any more until it is reopened: stopping"
            );
            failed.notify_one();
            return;
        }
    }
}

/// Keeps the disk reserve: released when the disk is short, written again when space is
/// back.
async fn watch_disk(store: Arc<Store>) {
    let mut interval = tokio::time::interval(DISK_CHECK_INTERVAL);
    loop {
        interval.tick().await;
        let store = store.clone();
        // Writing the reserve (megabytes, then fsync) must not hold an async thread.
        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || store.reserve().maintain()).await {
            tracing::debug!(error = %e, "cannot examine the disk");
        }
    }
}

/// Trims queues past `mux.queue_retention_days` and forgets old processed transactions.
async fn maintain(services: Arc<Services>) {
    let retention = services.config.queue_retention();
    let mut interval = tokio::time::interval(MAINTENANCE_INTERVAL);
    loop {
        interval.tick().await;
        let now = now_ms();
        let store = services.store.clone();
        let reporter = services.delivery.reporter.clone();
        let result = tokio::task::spawn_blocking(move || {
            let queued = if retention.is_zero() {
                0
            } else {
                let before = now.saturating_sub(retention.as_millis() as u64);
                store.trim_queues(before, |bridge, body| {
                    if let Ok(Some(bridge)) = store.bridge(bridge) {
                        reporter.dropped(&bridge, body, "queued longer than queue_retention_days");
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
            Ok(Ok((0, 0))) => {}
            Ok(Ok((queued, processed))) => tracing::info!(queued, processed, "trimmed old records"),
            Ok(Err(e)) => tracing::error!(error = %e, "maintenance failed"),
            Err(e) => tracing::error!(error = %e, "maintenance task failed"),
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
