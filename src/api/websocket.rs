//! The websocket bridges behind NAT open to receive their transactions (spec 4.2).
//!
//! asmux completes the upgrade itself rather than with `warp::ws`, to size the socket's
//! read buffer: the default 128 KiB, zero-filled on the first read, would cost that much
//! memory for every idle bridge.

use std::sync::{Arc, Mutex};

use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};
use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::{authorization, with_services, Response};
use crate::error::{handle_rejection, Error};
use crate::service::delivery::session;
use crate::service::Services;

/// Largest frame a bridge may send: responses, states, checkpoints and proxied HTTP
/// answers, never media.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
const SUBPROTOCOL: &str = "fi.mau.as_sync";
/// Where bridges open their websocket.
pub const PATH: &str = "/_matrix/client/unstable/fi.mau.as_sync";
/// Enough for the small frames bridges send; larger ones grow the buffer while read.
const READ_BUFFER_BYTES: usize = 4096;

/// The connection's pending upgrade, which the server moves out of the request (hyper
/// keeps it as a non-cloneable extension) so that a filter can take it.
#[derive(Clone)]
pub struct PendingUpgrade(Arc<Mutex<Option<hyper::upgrade::OnUpgrade>>>);

impl PendingUpgrade {
    /// Moves the upgrade out of a request that asks for one (hyper attaches one to every
    /// request; the others keep theirs untouched, at no cost).
    pub fn from_request<B>(request: &mut http::Request<B>) -> Option<PendingUpgrade> {
        if !request.headers().contains_key(http::header::UPGRADE) {
            return None;
        }
        let upgrade = request
            .extensions_mut()
            .remove::<hyper::upgrade::OnUpgrade>()?;
        Some(PendingUpgrade(Arc::new(Mutex::new(Some(upgrade)))))
    }

    fn take(&self) -> Option<hyper::upgrade::OnUpgrade> {
        crate::sync::lock(&self.0).take()
    }
}

/// A valid opening handshake: the client's key and the connection to upgrade.
struct Handshake {
    key: String,
    upgrade: hyper::upgrade::OnUpgrade,
}

pub fn routes(
    services: Arc<Services>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let session = authorization()
        .and(warp::header::optional::<String>("x-mautrix-process-id"))
        .and(warp::header::optional::<String>(
            "x-mautrix-websocket-version",
        ))
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and(with_services(services))
        .and_then(check)
        .and(handshake())
        .map(upgrade);
    // Once the path matched, every refusal is answered here: the request must not fall
    // through to the client-server proxy.
    warp::path!("_matrix" / "client" / "unstable" / "fi.mau.as_sync")
        .and(warp::get())
        .and(session.recover(handle_rejection).unify())
}

struct Accepted {
    services: Arc<Services>,
    bridge: Arc<crate::store::Bridge>,
    protocol: u8,
    process_id: String,
    subprotocol: bool,
}

/// Authenticates before upgrading, so refusals are plain Matrix errors.
async fn check(
    auth: Option<String>,
    process_id: Option<String>,
    version: Option<String>,
    protocols: Option<String>,
    services: Arc<Services>,
) -> Result<Accepted, Rejection> {
    let (bridge, protocol) =
        session::admit(&services.delivery, auth.as_deref(), version.as_deref())?;
    Ok(Accepted {
        services,
        bridge,
        protocol,
        process_id: process_id.unwrap_or_else(|| "unidentified".into()),
        subprotocol: protocols.is_some_and(|p| p.split(',').any(|p| p.trim() == SUBPROTOCOL)),
    })
}

/// The headers of RFC 6455's opening handshake, and the connection to upgrade.
fn handshake() -> impl Filter<Extract = (Handshake,), Error = Rejection> + Clone {
    warp::header::optional::<String>("connection")
        .and(warp::header::optional::<String>("upgrade"))
        .and(warp::header::optional::<String>("sec-websocket-version"))
        .and(warp::header::optional::<String>("sec-websocket-key"))
        .and(warp::ext::optional::<PendingUpgrade>())
        .and_then(
            |connection: Option<String>,
             upgrade: Option<String>,
             version: Option<String>,
             key: Option<String>,
             pending: Option<PendingUpgrade>| async move {
                let has = |value: &Option<String>, token: &str| {
                    value
                        .as_deref()
                        .is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
                };
                let valid = has(&connection, "upgrade")
                    && has(&upgrade, "websocket")
                    && version.as_deref().map(str::trim) == Some("13");
                match (valid, key, pending.and_then(|p| p.take())) {
                    (true, Some(key), Some(upgrade)) => Ok(Handshake { key, upgrade }),
                    _ => Err(warp::reject::custom(Error::BadRequest(
                        "Expected a websocket upgrade".into(),
                    ))),
                }
            },
        )
}

/// # `GET /_matrix/client/unstable/fi.mau.as_sync`
fn upgrade(accepted: Accepted, handshake: Handshake) -> Response {
    let Accepted {
        services,
        bridge,
        protocol,
        process_id,
        subprotocol,
    } = accepted;
    let delivery = services.delivery.clone();
    services.delivery.spawn_session(async move {
        let upgraded = match handshake.upgrade.await {
            Ok(upgraded) => upgraded,
            Err(e) => {
                tracing::info!(bridge = %bridge.name(), error = %e, "websocket upgrade failed");
                return;
            }
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(READ_BUFFER_BYTES)
            .max_message_size(Some(MAX_MESSAGE_BYTES))
            .max_frame_size(Some(MAX_MESSAGE_BYTES));
        let socket = tokio_tungstenite::WebSocketStream::from_raw_socket(
            hyper_util::rt::TokioIo::new(upgraded),
            Role::Server,
            Some(config),
        )
        .await;
        session::run(delivery, bridge, socket, protocol, process_id).await;
    });
    let mut response = warp::http::Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header(
            "sec-websocket-accept",
            derive_accept_key(handshake.key.as_bytes()),
        );
    if subprotocol {
        response = response.header("sec-websocket-protocol", SUBPROTOCOL);
    }
    response
        .body(Default::default())
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}
