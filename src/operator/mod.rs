//! What asmux writes for the people who run it and for the programs it connects: the
//! first configuration and generated secrets ([`setup`]), the registrations of asmux and
//! of each bridge ([`registration`]), the config blocks a bridge needs
//! ([`bridge_config`]), and what the original mautrix-asmux leaves behind: its config
//! translated ([`import_config`]) and its database imported ([`import_original`]).

pub mod bridge_config;
pub mod import_config;
pub mod import_original;
pub mod registration;
pub mod setup;
