//! MSC2659 for bridges: `POST /_matrix/client/v1/appservice/{appserviceId}/ping` (and
//! its unstable path) is answered by asmux, never forwarded: a bridge pings itself, over
//! HTTP for a push bridge and over its socket for a websocket bridge.

use http::StatusCode;
use serde_json::{json, Value};

use super::{json_response, read_limited, Proxy, ProxyResponse};
use crate::error::Error;
use crate::http_client::Body;
use crate::service::bridge_requests::{self, PingFailure};
use crate::store::Bridge;

impl Proxy {
    /// MSC2659 `POST /_matrix/client/v1/appservice/{id}/ping`, answered by asmux.
    pub(super) async fn appservice_ping(
        &self,
        bridge: Option<&Bridge>,
        target: &str,
        body: Body,
    ) -> Result<ProxyResponse, Error> {
        let bridge = bridge.ok_or(Error::Forbidden("Only bridges can ping themselves".into()))?;
        if target != bridge.id.to_string() {
            return Err(Error::Forbidden(
                "Appservices can only ping themselves".into(),
            ));
        }
        let txn_id = serde_json::from_slice::<Value>(&read_limited(body).await?)
            .ok()
            .and_then(|v| {
                v.get("transaction_id")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
            })
            .unwrap_or_default();
        let custom = |status: StatusCode, errcode: &'static str, message: &str| Error::Custom {
            status,
            errcode,
            message: message.into(),
        };
        let pinged = if bridge.push {
            if bridge.address.is_empty() {
                return Err(custom(
                    StatusCode::BAD_REQUEST,
                    "M_URL_NOT_SET",
                    "Application service doesn't have a URL configured",
                ));
            }
            bridge_requests::msc2659_ping(&self.delivery, bridge, &txn_id).await
        } else {
            bridge_requests::websocket_ping(&self.delivery, bridge, &txn_id).await
        };
        let duration = match pinged {
            Ok(ms) => ms,
            Err(PingFailure::Status(status, body)) => {
                let answer = json!({
                    "errcode": "M_BAD_STATUS",
                    "error": "Ping returned non-2xx status",
                    "status": status,
                    "body": String::from_utf8_lossy(&body),
                });
                return Ok(json_response(StatusCode::BAD_GATEWAY, &answer));
            }
            Err(PingFailure::Timeout) => {
                return Err(custom(
                    StatusCode::GATEWAY_TIMEOUT,
                    "M_CONNECTION_TIMEOUT",
                    "Connection to application service timed out",
                ))
            }
            Err(PingFailure::Connect) => {
                return Err(custom(
                    StatusCode::BAD_GATEWAY,
                    "M_CONNECTION_FAILED",
                    "Failed to connect to application service",
                ))
            }
        };
        Ok(json_response(
            StatusCode::OK,
            &json!({ "duration_ms": duration }),
        ))
    }
}

/// The `{appserviceId}` of an MSC2659 ping path.
pub(super) fn msc2659_target(path: &str) -> Option<&str> {
    let rest = path
        .strip_prefix("/_matrix/client/v1/appservice/")
        .or_else(|| path.strip_prefix("/_matrix/client/unstable/fi.mau.msc2659/appservice/"))?;
    rest.strip_suffix("/ping").filter(|id| !id.contains('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn msc2659_ping_paths() {
        assert_eq!(
            msc2659_target("/_matrix/client/v1/appservice/abc/ping"),
            Some("abc")
        );
        assert_eq!(
            msc2659_target("/_matrix/client/unstable/fi.mau.msc2659/appservice/x/ping"),
            Some("x")
        );
        assert_eq!(
            msc2659_target("/_matrix/client/v1/appservice/a/b/ping"),
            None
        );
    }
}
