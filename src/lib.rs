//! asmux: a Matrix application-service multiplexer. The homeserver knows one appservice;
//! asmux provisions bridges behind it at run time.
//!
//! # Layout
//! - [`cli`]: the command line (`serve`, `generate-registration`, `bridge ...`).
//! - [`config`]: the TOML configuration, defaults and validation.
//! - [`setup`]: files written for the operator: first config, tokens, registration.
//! - [`app`]: shared state and the server's accept loop; [`shutdown`]: signals.
//! - [`api`]: warp filters for each HTTP surface; [`error`]: Matrix errors and the one
//!   rejection handler.
//! - [`management`]: provisioning bridges and users (behind the management API and CLI).
//! - [`homeserver`]: requests asmux makes to the homeserver for itself;
//!   [`http_client`]: the pooled outgoing HTTP client.
//! - [`registration`]: asmux's and the bridges' registration documents.
//! - [`store`]: the sled database (the only module that knows sled) and its caches.
//! - [`matrix`]: bridge names and namespaces; [`secret`]: tokens and comparisons.
//!
//! Imports flow one way: api -> management -> store -> matrix.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod bridge_config;
pub mod bridge_requests;
pub mod cli;
pub mod config;
pub mod delivery;
pub mod error;
pub mod homeserver;
pub mod http_client;
pub mod intake;
pub mod management;
pub mod matrix;
pub mod metrics;
pub mod proxy;
pub mod registration;
pub mod reporting;
pub mod routing;
pub mod secret;
pub mod setup;
pub mod shutdown;
pub mod store;
pub mod systemd;
