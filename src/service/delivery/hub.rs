//! The live websocket connections, at most one per bridge.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use uuid::Uuid;

use super::connection::Connection;

/// Bridge UUID -> its current connection.
#[derive(Default)]
pub struct Hub {
    connections: Mutex<HashMap<Uuid, Arc<Connection>>>,
}

impl Hub {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Uuid, Arc<Connection>>> {
        crate::sync::lock(&self.connections)
    }

    /// Makes `conn` the bridge's connection; returns the one it replaces.
    pub fn insert(&self, conn: Arc<Connection>) -> Option<Arc<Connection>> {
        self.lock().insert(conn.bridge_id, conn)
    }

    /// Removes `conn` unless a newer connection already replaced it; whether it did.
    pub fn remove(&self, conn: &Connection) -> bool {
        let mut map = self.lock();
        let current = map
            .get(&conn.bridge_id)
            .is_some_and(|c| c.serial == conn.serial);
        if current {
            map.remove(&conn.bridge_id);
        }
        current
    }

    pub fn get(&self, bridge: Uuid) -> Option<Arc<Connection>> {
        self.lock().get(&bridge).cloned()
    }

    /// The bridges connected now.
    pub fn connected(&self) -> Vec<Uuid> {
        self.lock().keys().copied().collect()
    }

    pub fn all(&self) -> Vec<Arc<Connection>> {
        self.lock().values().cloned().collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }
}
