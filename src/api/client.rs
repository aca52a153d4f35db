//! The client-server API proxy surface: everything under `/_matrix/client/` and
//! `/_matrix/media/`, any method, streamed to the homeserver (spec 5).

use std::sync::Arc;

use bytes::Buf;
use futures_util::{Stream, StreamExt};
use http_body_util::BodyExt;
use warp::http::HeaderMap;
use warp::{Filter, Rejection, Reply};

use super::{raw_query, with_services, Response};
use crate::http_client::BoxError;
use crate::service::proxy::ProxyRequest;
use crate::service::Services;

pub fn routes(
    services: Arc<Services>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path("_matrix")
        .and(warp::path("client").or(warp::path("media")).unify())
        .and(warp::method())
        .and(warp::path::full())
        .and(raw_query())
        .and(warp::header::headers_cloned())
        .and(warp::body::stream())
        .and(with_services(services))
        .and_then(proxy)
}

/// # `* /_matrix/client/{...}` and `* /_matrix/media/{...}`
async fn proxy(
    method: warp::http::Method,
    path: warp::path::FullPath,
    query: String,
    headers: HeaderMap,
    body: impl Stream<Item = Result<impl Buf, warp::Error>> + Send + Sync + 'static,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    let body = BodyExt::boxed(http_body_util::StreamBody::new(body.map(|chunk| {
        chunk
            .map(|mut buf| http_body::Frame::data(buf.copy_to_bytes(buf.remaining())))
            .map_err(box_error)
    })));
    let request = ProxyRequest {
        method,
        path: path.as_str().to_owned(),
        query,
        headers,
        body,
    };
    let response = services.proxy.handle(request).await?;
    let (parts, body) = response.into_parts();
    let mut reply =
        warp::reply::stream(body.into_data_stream().map(|r| r.map_err(io_error))).into_response();
    *reply.status_mut() = parts.status;
    *reply.headers_mut() = parts.headers;
    Ok(reply)
}

fn box_error(e: warp::Error) -> BoxError {
    Box::new(e)
}

/// warp wants a concrete error type for response streams.
fn io_error(e: BoxError) -> std::io::Error {
    std::io::Error::other(e)
}
