//! The client-server API proxy surface: everything under `/_matrix/client/` and
//! `/_matrix/media/`, any method, streamed to the homeserver (spec 5).
//!
//! These requests are most of asmux's HTTP traffic and need nothing of warp (no
//! extraction, no route to choose), so the server hands them here straight from hyper,
//! ahead of the warp routes: the request's own body goes to the homeserver and the
//! homeserver's body comes back without an adapter in between (figures in
//! `benches/PROFILE.md`).

use std::sync::Arc;

use warp::Reply;

use crate::http_client::{boxed_body, Body};
use crate::service::proxy::{ConnectionState, ProxyRequest};
use crate::service::Services;

/// Whether the proxy serves `path`: the client-server and media APIs, except the one
/// websocket path among them.
pub fn is_proxied(path: &str) -> bool {
    (path.starts_with("/_matrix/client/") || path.starts_with("/_matrix/media/"))
        && !path.starts_with(super::websocket::PATH)
}

/// # `* /_matrix/client/{...}` and `* /_matrix/media/{...}`
///
/// `connection` is what the proxy keeps for the connection the request came on.
pub async fn proxy<B>(
    services: Arc<Services>,
    request: http::Request<B>,
    connection: ConnectionState,
) -> http::Response<Body>
where
    B: http_body::Body<Data = bytes::Bytes, Error = hyper::Error> + Send + Sync + 'static,
{
    let (parts, body) = request.into_parts();
    let request = ProxyRequest {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().unwrap_or_default().to_owned(),
        headers: parts.headers,
        body: boxed_body(body),
        connection,
    };
    match services.proxy.handle(request).await {
        Ok(response) => response,
        Err(error) => super::boxed(error.into_response()),
    }
}
