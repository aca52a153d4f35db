//! The application service API the homeserver calls (spec 3).

use std::sync::Arc;

use bytes::Bytes;
use warp::{Filter, Rejection, Reply};

use super::{authorization, body, raw_query, with_services, Response, Segment};
use crate::error::Error;
use crate::matrix::{HomeserverTransaction, TransactionError};
use crate::secret::presented_token;
use crate::service::bridge_requests::{self, Query};
use crate::service::intake::Accepted;
use crate::service::Services;
use warp::http::StatusCode;

pub fn routes(
    services: Arc<Services>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = services.config.mux.max_body_bytes;
    let transaction = warp::path!("_matrix" / "app" / "v1" / "transactions" / Segment)
        .or(warp::path!("transactions" / Segment))
        .unify()
        .and(warp::put())
        .and(homeserver_auth(services.clone()))
        .and(body::limited(limit))
        .and(with_services(services.clone()))
        .and_then(transaction);
    let ping = warp::path!("_matrix" / "app" / "v1" / "ping")
        .and(warp::post())
        .and(homeserver_auth(services.clone()))
        .map(|| warp::reply::json(&serde_json::json!({})).into_response());
    // Synapse escapes IDs with Python's `quote`, which leaves `/` as it is: an alias like
    // `#chat/1:server` arrives as several path segments.
    let user = warp::path!("_matrix" / "app" / "v1" / "users" / ..)
        .or(warp::path!("users" / ..))
        .unify()
        .and(decoded_tail())
        .map(QueryKind::User);
    let alias = warp::path!("_matrix" / "app" / "v1" / "rooms" / ..)
        .or(warp::path!("rooms" / ..))
        .unify()
        .and(decoded_tail())
        .map(QueryKind::Alias);
    let query = user
        .or(alias)
        .unify()
        .and(warp::get())
        .and(homeserver_auth(services.clone()))
        .and(with_services(services.clone()))
        .and_then(query);
    // The original relayed mautrix-syncproxy's errors here; asmux runs no sync proxy, so
    // whoever calls learns that plainly instead of an unknown-route 404.
    let syncproxy_error =
        warp::path!("_matrix" / "app" / "unstable" / "fi.mau.syncproxy" / "error" / Segment)
            .and(warp::put())
            .and(homeserver_auth(services.clone()))
            .and_then(|_txn: Segment| async {
                Err::<Response, _>(warp::reject::custom(Error::Custom {
                    status: StatusCode::NOT_IMPLEMENTED,
                    errcode: "M_UNRECOGNIZED",
                    message: "asmux does not support sync proxying (mautrix-syncproxy)".into(),
                }))
            });
    transaction
        .or(ping)
        .unify()
        .or(query)
        .unify()
        .or(syncproxy_error)
        .unify()
}

enum QueryKind {
    User(String),
    Alias(String),
}

/// # `GET /_matrix/app/v1/users/{userId}` and `GET /_matrix/app/v1/rooms/{alias}`
///
/// Asked of the bridge that owns the namespace; 404 `{}` when none can answer.
async fn query(kind: QueryKind, services: Arc<Services>) -> Result<Response, Rejection> {
    let query = match &kind {
        QueryKind::User(id) => Query::User(id),
        QueryKind::Alias(alias) => Query::Alias(alias),
    };
    let (status, body) = bridge_requests::query(&services.delivery, query)
        .await
        .unwrap_or((404, serde_json::json!({})));
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY);
    Ok(warp::reply::with_status(warp::reply::json(&body), status).into_response())
}

/// # `PUT /_matrix/app/v1/transactions/{txnId}` (and the legacy `/transactions/{txnId}`)
///
/// Answers 200 only once every routed event is on disk.
async fn transaction(
    Segment(txn_id): Segment,
    body: Bytes,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    let txn = HomeserverTransaction::parse(&body).map_err(|e| match e {
        TransactionError::NotJson => Error::NotJson(e.to_string()),
        TransactionError::BadJson(msg) => Error::BadJson(msg),
    })?;
    Ok(match services.intake.accept(&txn_id, txn).await? {
        Accepted::Duplicate => warp::reply::json(&serde_json::json!({})).into_response(),
        Accepted::Processed(sent_to) => warp::reply::json(&sent_to).into_response(),
    })
}

/// The rest of the path, percent-decoded; not matched when empty or not UTF-8.
fn decoded_tail() -> impl Filter<Extract = (String,), Error = Rejection> + Clone {
    warp::path::tail().and_then(|tail: warp::path::Tail| async move {
        match percent_encoding::percent_decode_str(tail.as_str()).decode_utf8() {
            Ok(id) if !id.is_empty() => Ok(id.into_owned()),
            _ => Err(warp::reject::not_found()),
        }
    })
}

/// Accepts the homeserver's hs_token from `Authorization: Bearer` or `?access_token=`.
fn homeserver_auth(
    services: Arc<Services>,
) -> impl Filter<Extract = (), Error = Rejection> + Clone {
    authorization()
        .and(raw_query())
        .and_then(move |header: Option<String>, query: String| {
            let services = services.clone();
            async move {
                let token = presented_token(header.as_deref(), &query);
                match token {
                    Some(t) if services.config.appservice.hs_token.matches(&t) => Ok(()),
                    _ => Err(warp::reject::custom(Error::BadHomeserverToken)),
                }
            }
        })
        .untuple_one()
}
