//! The websocket bridges behind NAT open to receive their transactions (spec 4.2).

use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Rejection, Reply};

use super::{authorization, with_state, Response};
use crate::app::AppState;
use crate::delivery::session;
use crate::error::{handle_rejection, Error};
use crate::management::bearer_token;

/// Largest frame a bridge may send: responses, states, checkpoints and proxied HTTP
/// answers, never media.
const MAX_MESSAGE_BYTES: usize = 16 * 1024 * 1024;
const SUBPROTOCOL: &str = "fi.mau.as_sync";

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let session = authorization()
        .and(warp::header::optional::<String>("x-mautrix-process-id"))
        .and(warp::header::optional::<String>(
            "x-mautrix-websocket-version",
        ))
        .and(warp::header::optional::<String>("sec-websocket-protocol"))
        .and(with_state(state))
        .and_then(check)
        .and(warp::ws().or_else(|_| async {
            Err(warp::reject::custom(Error::BadRequest(
                "Expected a websocket upgrade".into(),
            )))
        }))
        .map(upgrade);
    // Once the path matched, every refusal is answered here: the request must not fall
    // through to the client-server proxy.
    warp::path!("_matrix" / "client" / "unstable" / "fi.mau.as_sync")
        .and(warp::get())
        .and(session.recover(handle_rejection).unify())
}

struct Accepted {
    state: Arc<AppState>,
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
    state: Arc<AppState>,
) -> Result<Accepted, Rejection> {
    if state.delivery.is_shutting_down() {
        return Err(warp::reject::custom(Error::Custom {
            status: StatusCode::SERVICE_UNAVAILABLE,
            errcode: "COM.BEEPER.SHUTTING_DOWN",
            message: "Server is shutting down".into(),
        }));
    }
    let token = bearer_token(auth.as_deref())?;
    let bridge = state
        .store
        .bridge_by_token(token)
        .map_err(crate::management::store_error)?
        .ok_or(Error::UnknownToken("Invalid access token"))?;
    if bridge.push {
        return Err(warp::reject::custom(Error::Custom {
            status: StatusCode::UNAUTHORIZED,
            errcode: "COM.BEEPER.TXN_WS_NOT_ENABLED",
            message: "This appservice is set to receive transactions over HTTP".into(),
        }));
    }
    let protocol = version
        .and_then(|v| v.trim().parse::<u8>().ok())
        .unwrap_or(1)
        .clamp(1, 3);
    Ok(Accepted {
        state,
        bridge,
        protocol,
        process_id: process_id.unwrap_or_else(|| "unidentified".into()),
        subprotocol: protocols.is_some_and(|p| p.split(',').any(|p| p.trim() == SUBPROTOCOL)),
    })
}

/// # `GET /_matrix/client/unstable/fi.mau.as_sync`
fn upgrade(accepted: Accepted, ws: warp::ws::Ws) -> Response {
    let Accepted {
        state,
        bridge,
        protocol,
        process_id,
        subprotocol,
    } = accepted;
    let delivery = state.delivery.clone();
    let reply = ws
        .max_message_size(MAX_MESSAGE_BYTES)
        .max_frame_size(MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| session::run(delivery, bridge, socket, protocol, process_id));
    if subprotocol {
        warp::reply::with_header(reply, "sec-websocket-protocol", SUBPROTOCOL).into_response()
    } else {
        reply.into_response()
    }
}
