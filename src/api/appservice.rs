//! The application service API the homeserver calls (spec 3).

use std::sync::Arc;

use warp::{Filter, Rejection, Reply};

use super::{authorization, query_param, raw_query, Response};
use crate::app::AppState;
use crate::error::Error;

pub fn routes(
    state: Arc<AppState>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    ping(state)
}

/// # `POST /_matrix/app/v1/ping`
///
/// MSC2659: the homeserver checks that asmux is reachable and has its token.
fn ping(state: Arc<AppState>) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    warp::path!("_matrix" / "app" / "v1" / "ping")
        .and(warp::post())
        .and(homeserver_auth(state))
        .map(|| warp::reply::json(&serde_json::json!({})).into_response())
}

/// Accepts the homeserver's hs_token from `Authorization: Bearer` or `?access_token=`.
fn homeserver_auth(state: Arc<AppState>) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    authorization()
        .and(raw_query())
        .and_then(move |header: Option<String>, query: String| {
            let state = state.clone();
            async move {
                let token = header
                    .as_deref()
                    .and_then(|h| h.strip_prefix("Bearer "))
                    .map(str::to_owned)
                    .or_else(|| query_param(&query, "access_token"));
                match token {
                    Some(t) if state.config.appservice.hs_token.matches(&t) => Ok(()),
                    _ => Err(warp::reject::custom(Error::BadHomeserverToken)),
                }
            }
        })
        .untuple_one()
}
