//! The management API under `/_matrix/asmux` (spec 6): bearer auth with the shared secret
//! or a user's api_token, the same routes under `/mxauth` with a Matrix access token, and
//! CORS on every answer.

use std::sync::Arc;

use bytes::Bytes;
use warp::http::{HeaderValue, Method, StatusCode};
use warp::{Filter, Rejection, Reply};

use super::{authorization, body, query_param, raw_query, with_services, Response, Segment};
use crate::error::handle_rejection;
use crate::service::management::{BridgeRef, Caller, ProvisionRequest};
use crate::service::Services;

pub fn routes(
    services: Arc<Services>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    // Matched without a method rejection, so that other methods on unknown paths stay 404.
    let options = warp::method().and_then(|method: Method| async move {
        if method == Method::OPTIONS {
            Ok(StatusCode::OK.into_response())
        } else {
            Err(warp::reject::not_found())
        }
    });
    let mxauth = warp::path("mxauth").and(
        exec_route(services.clone())
            .or(surface(
                services.clone(),
                matrix_caller(services.clone()),
                true,
            ))
            .unify(),
    );
    let public = public_config(services.clone());
    let bearer = surface(services.clone(), bearer_caller(services), false);
    warp::path!("_matrix" / "asmux" / ..)
        .and(
            options
                .or(public)
                .unify()
                .or(mxauth)
                .unify()
                .or(bearer)
                .unify()
                .recover(handle_rejection)
                .unify(),
        )
        .map(with_cors)
}

/// A management request, as its path and method say; who asks is checked after it
/// matched, so that unknown paths answer 404 to anyone.
enum Call {
    Provision(BridgeRef),
    GetBridge(BridgeRef),
    DeleteBridge(BridgeRef),
    Ping(BridgeRef),
    Status(BridgeRef),
    ClearQueue(BridgeRef),
    List,
    Statuses,
    Backup,
    /// `put` creates; the query may ask for it too (`?create=1`).
    User {
        id: String,
        put: bool,
        query: String,
    },
    GetProxy(String),
    PutProxy {
        id: String,
        query: String,
    },
    DeleteRoom(String),
}

/// The management routes, authenticated by `caller` (checked after the path matched).
/// `matrix_auth` tells that the caller proved itself with its own Matrix access token,
/// which alone may see the private half of its proxy settings.
fn surface<C>(
    services: Arc<Services>,
    caller: C,
    matrix_auth: bool,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone
where
    C: Filter<Extract = (Caller,), Error = Rejection> + Clone + Send + Sync + 'static,
{
    let limit = services.config.mux.max_management_body_bytes;
    let by_id = warp::path!("appservice" / Segment)
        .and_then(|Segment(id)| async move { BridgeRef::id(&id).map_err(warp::reject::custom) });
    let by_name = warp::path!("appservice" / Segment / Segment)
        .map(|Segment(owner), Segment(prefix)| BridgeRef::name(&owner, &prefix));
    let bridge = by_id.or(by_name).unify();
    let on_bridge = |method: warp::filters::BoxedFilter<()>, call: fn(BridgeRef) -> Call| {
        bridge.and(method).map(call)
    };
    let on_action =
        |action, method: warp::filters::BoxedFilter<()>, call: fn(BridgeRef) -> Call| {
            bridge_action(action).and(method).map(call)
        };
    let user = warp::path!("user" / Segment)
        .and(
            warp::get()
                .map(|| false)
                .or(warp::put().map(|| true))
                .unify(),
        )
        .and(raw_query())
        .map(|Segment(id), put, query| Call::User { id, put, query });
    let calls = on_bridge(warp::put().boxed(), Call::Provision)
        .or(on_bridge(warp::get().boxed(), Call::GetBridge))
        .unify()
        .or(on_bridge(warp::delete().boxed(), Call::DeleteBridge))
        .unify()
        .or(on_action("ping", warp::post().boxed(), Call::Ping))
        .unify()
        .or(on_action("status", warp::get().boxed(), Call::Status))
        .unify()
        .or(on_action("queue", warp::delete().boxed(), Call::ClearQueue))
        .unify()
        .or(warp::path!("appservices")
            .and(warp::get())
            .map(|| Call::List))
        .unify()
        .or(warp::path!("appservices" / "status")
            .and(warp::get())
            .map(|| Call::Statuses))
        .unify()
        .or(warp::path!("admin" / "backup")
            .and(warp::get())
            .map(|| Call::Backup))
        .unify()
        .or(user)
        .unify()
        .or(warp::path!("user" / Segment / "proxy")
            .and(warp::get())
            .map(|Segment(id)| Call::GetProxy(id)))
        .unify()
        .or(warp::path!("user" / Segment / "proxy")
            .and(warp::put())
            .and(raw_query())
            .map(|Segment(id), query| Call::PutProxy { id, query }))
        .unify()
        .or(warp::path!("room" / Segment)
            .and(warp::delete())
            .map(|Segment(room_id)| Call::DeleteRoom(room_id)))
        .unify();
    calls
        .and(caller)
        .and(body::limited(limit))
        .and(with_services(services))
        .and_then(move |call, caller, body, services| {
            dispatch(call, caller, body, services, matrix_auth)
        })
}

/// Answers a management request of `caller`; `body` is empty but where the call has one.
async fn dispatch(
    call: Call,
    caller: Caller,
    body: Bytes,
    services: Arc<Services>,
    matrix_auth: bool,
) -> Result<Response, Rejection> {
    let management = &services.management;
    Ok(match call {
        Call::Provision(target) => return provision(target, caller, body, &services).await,
        Call::GetBridge(target) => ok(&management.registration(&caller, &target)?),
        Call::DeleteBridge(target) => {
            management.delete(&caller, &target).await?;
            StatusCode::NO_CONTENT.into_response()
        }
        Call::Ping(target) => ok(&management.ping(&caller, &target).await?),
        Call::Status(target) => ok(&management.status(&caller, &target).await?),
        // Drops everything queued for the bridge: `{"dropped": N}`.
        Call::ClearQueue(target) => {
            let dropped = management.clear_queue(&caller, &target).await?;
            ok(&serde_json::json!({ "dropped": dropped }))
        }
        Call::List => ok(&serde_json::json!({ "appservices": management.list(&caller)? })),
        Call::Statuses => {
            ok(&serde_json::json!({ "bridges": management.statuses(&caller).await? }))
        }
        Call::Backup => backup(management.backup(&caller)?),
        Call::User { id, put, query } => {
            let create = put || is_yes(query_param(&query, "create"));
            ok(&management.user(&caller, &id, create).await?)
        }
        Call::GetProxy(id) => ok(&management.user_proxy(&caller, &id, matrix_auth).await?),
        Call::PutProxy { id, query } => {
            let settings: serde_json::Map<String, serde_json::Value> = body::parse_json(&body)?;
            let regenerate = is_yes(query_param(&query, "regenerate"));
            ok(&management
                .set_user_proxy(&caller, &id, settings, regenerate)
                .await?)
        }
        Call::DeleteRoom(room_id) => {
            management.delete_room(&caller, &room_id).await?;
            StatusCode::NO_CONTENT.into_response()
        }
    })
}

/// A query flag's yes (`1`, `true`, `t`, `y`, `yes`), as the original read it.
fn is_yes(value: Option<String>) -> bool {
    value.is_some_and(|v| {
        matches!(
            v.to_ascii_lowercase().as_str(),
            "1" | "true" | "t" | "y" | "yes"
        )
    })
}

/// Mxauth only: `POST /_matrix/asmux/mxauth/appservice/.../exec/{command}`.
fn exec_route(
    services: Arc<Services>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let limit = services.config.mux.max_management_body_bytes;
    let target = warp::path!("appservice" / Segment / "exec" / Segment)
        .and_then(|Segment(id), Segment(command)| async move {
            BridgeRef::id(&id)
                .map(|t| (t, command))
                .map_err(warp::reject::custom)
        })
        .or(
            warp::path!("appservice" / Segment / Segment / "exec" / Segment).map(
                |Segment(owner), Segment(prefix), Segment(command)| {
                    (BridgeRef::name(&owner, &prefix), command)
                },
            ),
        )
        .unify()
        .untuple_one();
    target
        .and(warp::post())
        .and(matrix_caller(services.clone()))
        .and(body::limited(limit))
        .and(with_services(services))
        .and_then(exec)
}

/// `appservice/{uuid}/{action}` or `appservice/{owner}/{prefix}/{action}`.
fn bridge_action(
    action: &'static str,
) -> impl Filter<Extract = (BridgeRef,), Error = Rejection> + Clone {
    let by_id = warp::path("appservice")
        .and(warp::path::param::<Segment>())
        .and(warp::path(action))
        .and(warp::path::end())
        .and_then(|Segment(id)| async move { BridgeRef::id(&id).map_err(warp::reject::custom) });
    let by_name = warp::path("appservice")
        .and(warp::path::param::<Segment>())
        .and(warp::path::param::<Segment>())
        .and(warp::path(action))
        .and(warp::path::end())
        .map(|Segment(owner), Segment(prefix)| BridgeRef::name(&owner, &prefix));
    by_id.or(by_name).unify()
}

fn bearer_caller(
    services: Arc<Services>,
) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    authorization().and_then(move |header: Option<String>| {
        let services = services.clone();
        async move {
            services
                .management
                .caller_from_bearer(header.as_deref())
                .map_err(warp::reject::custom)
        }
    })
}

fn matrix_caller(
    services: Arc<Services>,
) -> impl Filter<Extract = (Caller,), Error = Rejection> + Clone {
    authorization().and_then(move |header: Option<String>| {
        let services = services.clone();
        async move {
            services
                .management
                .caller_from_matrix_token(header.as_deref())
                .await
                .map_err(warp::reject::custom)
        }
    })
}

/// # `PUT /_matrix/asmux/appservice/{owner}/{prefix}` and `/appservice/{uuid}`
async fn provision(
    target: BridgeRef,
    caller: Caller,
    body: Bytes,
    services: &Services,
) -> Result<Response, Rejection> {
    let request: ProvisionRequest = body::parse_json(&body)?;
    let (registration, created) = services
        .management
        .provision(&caller, &target, request)
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json(&registration, status))
}

/// The config download of a bridge, authenticated by HTTP Basic with its owner and its
/// config password instead of a bearer token.
fn public_config(
    services: Arc<Services>,
) -> impl Filter<Extract = (Response,), Error = Rejection> + Clone {
    let register = warp::path!("public" / "config" / Segment / "register")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(with_services(services.clone()))
        .and_then(register_config);
    let download = warp::path!("public" / "config" / Segment / "download")
        .and(warp::get())
        .and(warp::header::headers_cloned())
        .and(with_services(services))
        .and_then(download_config);
    register.or(download).unify()
}

/// # `GET /_matrix/asmux/public/config/{prefix}/register`
///
/// Trades the one-time config password for a lasting one: 303 to the download URL.
async fn register_config(
    Segment(prefix): Segment,
    headers: warp::http::HeaderMap,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    let location = services
        .config_download
        .register(&prefix, headers.get("authorization"))
        .await?;
    Ok(warp::reply::with_header(StatusCode::SEE_OTHER, "location", location).into_response())
}

/// # `GET /_matrix/asmux/public/config/{prefix}/download`
async fn download_config(
    Segment(prefix): Segment,
    headers: warp::http::HeaderMap,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    let yaml = services
        .config_download
        .download(&prefix, headers.get("authorization"))?;
    Ok(warp::reply::with_header(yaml, "content-type", "text/yaml").into_response())
}

/// # `POST /_matrix/asmux/mxauth/appservice/{owner}/{prefix}/exec/{command}`
async fn exec(
    target: BridgeRef,
    command: String,
    caller: Caller,
    body: Bytes,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    let body: serde_json::Value = body::parse_json(&body)?;
    let (status, data) = services
        .management
        .exec(&caller, &target, &command, body)
        .await?;
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::OK);
    Ok(json(&data, status))
}

/// # `GET /_matrix/asmux/admin/backup`
///
/// Streams a single-file backup of the whole database (root only).
fn backup(chunks: tokio::sync::mpsc::Receiver<std::io::Result<Bytes>>) -> Response {
    let stream =
        futures_util::stream::unfold(
            chunks,
            |mut rx| async move { rx.recv().await.map(|c| (c, rx)) },
        );
    let mut reply = warp::reply::stream(stream).into_response();
    reply.headers_mut().insert(
        "content-type",
        HeaderValue::from_static("application/octet-stream"),
    );
    reply.headers_mut().insert(
        "content-disposition",
        HeaderValue::from_static("attachment; filename=\"asmux-backup.bin\""),
    );
    reply
}

fn ok<T: serde::Serialize>(value: &T) -> Response {
    json(value, StatusCode::OK)
}

fn json<T: serde::Serialize>(value: &T, status: StatusCode) -> Response {
    warp::reply::with_status(warp::reply::json(value), status).into_response()
}

fn with_cors(mut response: Response) -> Response {
    let headers = response.headers_mut();
    for (name, value) in [
        ("access-control-allow-origin", "*"),
        (
            "access-control-allow-headers",
            "Authorization, Content-Type",
        ),
        ("access-control-allow-methods", "GET, PUT, POST, OPTIONS"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}
