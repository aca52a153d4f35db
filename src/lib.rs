//! asmux: a Matrix application-service multiplexer. The homeserver knows one appservice;
//! asmux provisions bridges behind it at run time.
//!
//! # Layout
//! From the top down; a module imports only from modules below it.
//! - [`cli`]: the command line (`serve`, `generate-registration`, `bridge ...`).
//! - [`server`]: the running server: start ([`server::start`]), accept loop, connections,
//!   metrics listener, flushing, maintenance, signals ([`server::shutdown`]) and systemd
//!   ([`server::systemd`]).
//! - [`api`]: warp filters for each HTTP surface, translating HTTP to service calls.
//! - [`service`]: the core, one module per service (intake, routing, delivery, proxy,
//!   management, config downloads, user proxy settings, bridge requests, reporting,
//!   homeserver), held by [`service::Services`].
//! - [`operator`]: the documents asmux writes: first config, registrations, the config
//!   blocks of a bridge.
//! - [`error`]: the Matrix error every request path answers with.
//! - [`store`]: the sled database (the only module that knows sled) and its caches.
//! - [`matrix`]: bridge names and namespaces, transactions, event fields.
//!
//! Foundations any module may use, which import none of the above but [`matrix`]:
//! [`config`] (the TOML configuration), [`clock`] (unix time), [`secret`] (tokens and
//! comparisons),
//! [`http_client`] (the pooled outgoing client), [`metrics`] (Prometheus), [`sync`]
//! (locks), [`tasks`] (the tasks of a server, stopped together).
#![forbid(unsafe_code)]

pub mod api;
pub mod cli;
pub mod clock;
pub mod config;
pub mod error;
pub mod http_client;
pub mod matrix;
pub mod metrics;
pub mod operator;
pub mod secret;
pub mod server;
pub mod service;
pub mod store;
pub mod sync;
pub mod tasks;
