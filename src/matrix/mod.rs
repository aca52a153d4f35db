//! Matrix data as asmux sees it: bridge names and namespaces, transactions, and the few
//! event fields routing needs.

mod event;
mod namespace;
mod transaction;

pub use event::EventMeta;
pub use namespace::{is_valid_name, regex_escape, BridgeUser, Namespace};
pub use transaction::{
    BridgeTransaction, DeviceLists, HomeserverTransaction, Raw, TransactionError,
};
