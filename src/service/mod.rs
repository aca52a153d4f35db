//! The core of asmux, below the HTTP surfaces and the command line: each module is one
//! service, and [`Services`] is the handle that holds them all.
//!
//! - [`intake`]: homeserver transactions, from retry detection to the durable queue;
//!   [`routing`]: which bridge gets which event (pure).
//! - [`delivery`]: per-bridge workers, HTTP push, websocket sessions and the hub of live
//!   sockets.
//! - [`proxy`]: the client-server API proxy for bridges.
//! - [`management`]: provisioning bridges and users (the management API and the CLI);
//!   [`config_download`]: the config passwords and downloads of bridges;
//!   [`user_proxy`]: owners' proxy settings.
//! - [`bridge_requests`]: what asmux asks of a bridge outside transactions (state pings,
//!   exec, homeserver queries, MSC2659).
//! - [`reporting`]: checkpoints and states sent to optional external endpoints.
//! - [`homeserver`]: requests asmux makes to the homeserver for itself.

pub mod bridge_requests;
pub mod config_download;
pub mod delivery;
pub mod homeserver;
pub mod intake;
pub mod management;
pub mod proxy;
pub mod reporting;
pub mod routing;
pub mod user_proxy;

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::config::Config;
use crate::http_client::HttpClient;
use crate::metrics::Metrics;
use crate::store::Store;
use crate::tasks::Tasks;
use config_download::ConfigDownload;
use delivery::Delivery;
use homeserver::Homeserver;
use intake::Intake;
use management::Management;
use proxy::Proxy;

/// Every service, shared by every connection and task of the server.
pub struct Services {
    pub config: Arc<Config>,
    pub store: Arc<Store>,
    pub homeserver: Arc<Homeserver>,
    pub management: Management,
    pub config_download: ConfigDownload,
    pub delivery: Arc<Delivery>,
    pub intake: Intake,
    pub proxy: Proxy,
    pub metrics: Arc<Metrics>,
    pub tasks: Tasks,
}

impl Services {
    pub fn new(config: Config, store: Arc<Store>) -> Result<Arc<Services>> {
        let client = HttpClient::new().context("cannot load TLS root certificates")?;
        let homeserver = Arc::new(Homeserver::new(&config, client.clone()));
        let metrics = Arc::new(Metrics::default());
        let tasks = Tasks::default();
        let delivery = Delivery::new(
            &config,
            store.clone(),
            client.clone(),
            metrics.clone(),
            tasks.clone(),
        );
        let proxy = Proxy::new(
            &config,
            store.clone(),
            delivery.clone(),
            homeserver.clone(),
            client,
        );
        let management =
            Management::new(&config, store.clone(), homeserver.clone(), delivery.clone());
        let intake = Intake::new(&config, store.clone(), delivery.clone(), metrics.clone());
        let config = Arc::new(config);
        Ok(Arc::new(Services {
            config_download: ConfigDownload::new(config.clone(), store.clone()),
            config,
            store,
            homeserver,
            management,
            delivery,
            intake,
            proxy,
            metrics,
            tasks,
        }))
    }
}
