//! The HTTP surfaces as warp filters. Handlers here only translate HTTP to calls on the
//! services and back; the logic lives below this module.

mod appservice;
mod body;
mod client;
mod management;
mod websocket;

use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;

use warp::{Filter, Rejection};

use crate::error::handle_rejection;
use crate::http_client::{boxed_body, Body};
use crate::service::Services;

pub use client::{is_proxied, proxy};
pub use warp::reply::Response;
pub use websocket::PendingUpgrade;

/// Every route asmux serves through warp, with the one rejection handler: all but the
/// proxied client-server API (see [`is_proxied`]).
pub fn routes(
    services: Arc<Services>,
) -> impl Filter<Extract = (Response,), Error = Infallible> + Clone {
    websocket::routes(services.clone())
        .or(appservice::routes(services.clone()))
        .unify()
        .or(management::routes(services))
        .unify()
        .recover(handle_rejection)
        .unify()
}

/// A warp response with the body type the server answers with.
pub fn boxed(response: Response) -> http::Response<Body> {
    response.map(boxed_body)
}

/// Injects the shared services into a handler.
fn with_services(
    services: Arc<Services>,
) -> impl Filter<Extract = (Arc<Services>,), Error = Infallible> + Clone {
    warp::any().map(move || services.clone())
}

/// The `Authorization` header, if any.
fn authorization() -> impl Filter<Extract = (Option<String>,), Error = Rejection> + Copy {
    warp::header::optional::<String>("authorization")
}

/// The raw query string, empty when there is none.
fn raw_query() -> impl Filter<Extract = (String,), Error = Infallible> + Copy {
    warp::query::raw().or(warp::any().map(String::new)).unify()
}

/// The first value of query parameter `name`.
fn query_param(raw: &str, name: &str) -> Option<String> {
    form_urlencoded::parse(raw.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

/// A percent-decoded path segment (warp's `param` does not decode).
#[derive(Debug, Clone)]
struct Segment(String);

impl FromStr for Segment {
    type Err = std::str::Utf8Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Segment(
            percent_encoding::percent_decode_str(s)
                .decode_utf8()?
                .into_owned(),
        ))
    }
}
