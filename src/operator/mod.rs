//! What asmux writes for the people who run it and for the programs it connects: the
//! first configuration and generated secrets ([`setup`]), the registrations of asmux and
//! of each bridge ([`registration`]), the config blocks a bridge needs
//! ([`bridge_config`]), and the original mautrix-asmux's config translated
//! ([`import_config`]).

pub mod bridge_config;
pub mod import_config;
pub mod registration;
pub mod setup;
