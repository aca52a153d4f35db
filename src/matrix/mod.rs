//! Matrix identifiers as asmux sees them: bridge names and the namespaces derived from them.

mod namespace;

pub use namespace::{is_valid_name, regex_escape, BridgeUser, Namespace};
