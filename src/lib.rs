//! asmux: a Matrix application-service multiplexer.
//!
//! # Layout
//! - [`config`]: the TOML configuration, defaults and validation.
//! - [`secret`]: token generation, constant-time comparison, log-safe secrets.
//! - [`matrix`]: bridge names and namespaces.
//! - [`store`]: the sled database (the only module that knows sled) and its caches.
#![forbid(unsafe_code)]

pub mod config;
pub mod error;
pub mod matrix;
pub mod secret;
pub mod store;
