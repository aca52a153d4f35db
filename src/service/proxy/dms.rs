//! `PUT|PATCH /_matrix/client/unstable/com.beeper.asmux/dms` (and the deprecated
//! `net.maunium.asmux`): a bridge updates its owner's `m.direct` account data. The owner's
//! own token authorises the change; the bridge's token says which bridge's entries it is.

use std::sync::Arc;

use http::{header, Method, StatusCode};
use serde_json::{json, Map, Value};

use super::{json_response, read_limited, Proxy, ProxyRequest, ProxyResponse};
use crate::error::Error;
use crate::secret::bearer;
use crate::service::management::bearer_token;

pub fn is_dms_path(path: &str) -> bool {
    matches!(
        path,
        "/_matrix/client/unstable/com.beeper.asmux/dms"
            | "/_matrix/client/unstable/net.maunium.asmux/dms"
    )
}

impl Proxy {
    pub(super) async fn dms(&self, req: ProxyRequest) -> Result<ProxyResponse, Error> {
        let header_value = |name| {
            req.headers
                .get(name)
                .and_then(|v: &http::HeaderValue| v.to_str().ok())
        };
        let owner_token = bearer_token(header_value(header::AUTHORIZATION.as_str()))?.to_owned();
        let bridge_token = header_value("x-asmux-auth")
            .map(|v| bearer(v).unwrap_or(v).to_owned())
            .ok_or(Error::MissingToken("Missing X-Asmux-Auth header"))?;
        let bridge = self
            .store
            .bridge_by_token(&bridge_token)?
            .ok_or(Error::UnknownToken("Invalid X-Asmux-Auth token"))?;
        let owner_id = self.namespace.user_id(&bridge.owner);
        let caller = (self.homeserver).caller(&owner_token, "Invalid access token");
        if caller.await? != owner_id {
            return Err(Error::Custom {
                status: StatusCode::BAD_REQUEST,
                errcode: "M_FORBIDDEN",
                message: "The access token does not belong to the bridge's owner".into(),
            });
        }
        let body = read_limited(req.body).await?;
        let update: Map<String, Value> = serde_json::from_slice::<Value>(&body)
            .map_err(|_| Error::NotJson("Request body is not JSON".into()))?
            .as_object()
            .cloned()
            .ok_or_else(|| Error::BadJson("Expected an object of user IDs to room lists".into()))?;

        let lock = self.dm_lock(&owner_id);
        let _guard = lock.lock().await;
        let mut direct = self
            .homeserver
            .account_data(&owner_token, &owner_id, "m.direct")
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot read m.direct");
                Error::BadGateway
            })?
            .and_then(|v| v.as_object().cloned())
            .unwrap_or_default();
        if req.method == Method::PUT {
            // PUT replaces this bridge's entries (the bot's own DMs stay).
            let bot = bridge.bot_id(&self.namespace);
            direct.retain(|user, _| {
                *user == bot
                    || !self
                        .namespace
                        .in_bridge(user, &bridge.owner, &bridge.prefix)
            });
        }
        direct.extend(update);
        self.homeserver
            .set_account_data(&owner_token, &owner_id, "m.direct", &Value::Object(direct))
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "cannot write m.direct");
                Error::BadGateway
            })?;
        Ok(json_response(StatusCode::OK, &json!({})))
    }

    fn dm_lock(&self, user_id: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = crate::sync::lock(&self.dm_locks);
        // Idle locks are dropped so the map stays as small as the set of active users.
        locks.retain(|_, lock| Arc::strong_count(lock) > 1);
        locks.entry(user_id.to_owned()).or_default().clone()
    }
}
