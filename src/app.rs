//! The running server: shared state and the accept loop.

use std::future::Future;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use crate::config::Config;
use crate::homeserver::Homeserver;
use crate::http_client::HttpClient;
use crate::management::Management;
use crate::store::Store;

/// Everything a request handler may need, shared by every connection.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub homeserver: Arc<Homeserver>,
    pub management: Management,
}

impl AppState {
    pub fn new(config: Config, store: Arc<Store>) -> Result<Arc<AppState>> {
        let client = HttpClient::new().context("cannot load TLS root certificates")?;
        let homeserver = Arc::new(Homeserver::new(&config, client));
        let management = Management::new(&config, store.clone(), homeserver.clone());
        Ok(Arc::new(AppState {
            config: Arc::new(config),
            store,
            homeserver,
            management,
        }))
    }
}

/// Serves on `listener` until `shutdown` completes, lets requests in flight finish, and
/// flushes the store.
pub async fn run(
    listener: TcpListener,
    state: Arc<AppState>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "listening");
    }
    warp::serve(crate::api::routes(state.clone()))
        .incoming(listener)
        .graceful(shutdown)
        .run()
        .await;
    state.store.flush().await.context("final flush failed")?;
    tracing::info!("stopped");
    Ok(())
}
