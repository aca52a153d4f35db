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

    let provision = bridge
        .and(warp::put())
        .and(caller.clone())
        .and(body::limited(limit))
        .and(with_services(services.clone()))
        .and_then(provision);
    let get = bridge
        .and(warp::get())
        .and(caller.clone())
        .and(with_services(services.clone()))
        .and_then(get_bridge);
    let delete = bridge
        .and(warp::delete())
        .and(caller.clone())
        .and(with_services(services.clone()))
        .and_then(delete_bridge);
    let ping = bridge_action("ping")
        .and(warp::post())
        .and(caller.clone())
        .and(with_services(services.clone()))
        .and_then(ping_bridge);
    let clear_queue = bridge_action("queue")
        .and(warp::delete())
        .and(caller.clone())
        .and(with_services(services.clone()))
        .and_then(clear_queue);
    let status = bridge_action("status")
        .and(warp::get())
        .and(caller.clone())
        .and(with_services(services.clone()))
        .and_then(bridge_status);
    let backup = warp::path!("admin" / "backup")
        .and(warp::get())
        .and(caller.clone())
        .and(with_services(services.clone()))
        .and_then(backup);
    let statuses = warp::path!("appservices" / "status")
        .and(warp::get())
        .and(caller.clone())
        .and(with_services(services.clone()))
        .and_then(bridge_statuses);
    let list = warp::path!("appservices")
        .and(warp::get())
        .and(caller.clone())
        .and(with_services(services.clone()))
        .and_then(list_bridges);
    let user = warp::path!("user" / Segment)
        .and(
            warp::get()
                .map(|| false)
                .or(warp::put().map(|| true))
                .unify(),
        )
        .and(raw_query())
        .and(caller.clone())
        .and(with_services(services.clone()))
        .and_then(get_user);
    let get_proxy = warp::path!("user" / Segment / "proxy")
        .and(warp::get())
        .and(caller.clone())
        .and(with_services(services.clone()))
        .and_then(
            move |Segment(id), caller: Caller, services: Arc<Services>| async move {
                let config = services
                    .management
                    .user_proxy(&caller, &id, matrix_auth)
                    .await?;
                Ok::<_, Rejection>(json(&config, StatusCode::OK))
            },
        );
    let put_proxy = warp::path!("user" / Segment / "proxy")
        .and(warp::put())
        .and(raw_query())
        .and(caller.clone())
        .and(body::limited(limit))
        .and(with_services(services.clone()))
        .and_then(put_proxy);
    let room = warp::path!("room" / Segment)
        .and(warp::delete())
        .and(caller)
        .and(with_services(services))
        .and_then(delete_room);

    provision
        .or(get)
        .unify()
        .or(delete)
        .unify()
        .or(list)
        .unify()
        .or(statuses)
        .unify()
        .or(user)
        .unify()
        .or(get_proxy)
        .unify()
        .or(put_proxy)
        .unify()
        .or(room)
        .unify()
        .or(ping)
        .unify()
        .or(status)
        .unify()
        .or(clear_queue)
        .unify()
        .or(backup)
        .unify()
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
    services: Arc<Services>,
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

/// # `GET /_matrix/asmux/appservice/{owner}/{prefix}` and `/appservice/{uuid}`
async fn get_bridge(
    target: BridgeRef,
    caller: Caller,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    let registration = services.management.registration(&caller, &target)?;
    Ok(json(&registration, StatusCode::OK))
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

/// # `DELETE /_matrix/asmux/appservice/{owner}/{prefix}` and `/appservice/{uuid}`
async fn delete_bridge(
    target: BridgeRef,
    caller: Caller,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    services.management.delete(&caller, &target).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// # `POST /_matrix/asmux/appservice/{owner}/{prefix}/ping` and `/appservice/{uuid}/ping`
async fn ping_bridge(
    target: BridgeRef,
    caller: Caller,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    let bridge_state = services.management.ping(&caller, &target).await?;
    Ok(json(&bridge_state, StatusCode::OK))
}

/// # `GET /_matrix/asmux/appservice/{owner}/{prefix}/status` and `/appservice/{uuid}/status`
async fn bridge_status(
    target: BridgeRef,
    caller: Caller,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    let status = services.management.status(&caller, &target).await?;
    Ok(json(&status, StatusCode::OK))
}

/// # `DELETE /_matrix/asmux/appservice/{owner}/{prefix}/queue` and `/appservice/{uuid}/queue`
///
/// Drops everything queued for the bridge: `{"dropped": N}`.
async fn clear_queue(
    target: BridgeRef,
    caller: Caller,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    let dropped = services.management.clear_queue(&caller, &target).await?;
    Ok(json(
        &serde_json::json!({ "dropped": dropped }),
        StatusCode::OK,
    ))
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
async fn backup(caller: Caller, services: Arc<Services>) -> Result<Response, Rejection> {
    let chunks = services.management.backup(&caller)?;
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
    Ok(reply)
}

/// # `GET /_matrix/asmux/appservices`
async fn list_bridges(caller: Caller, services: Arc<Services>) -> Result<Response, Rejection> {
    let bridges = services.management.list(&caller)?;
    Ok(json(
        &serde_json::json!({ "appservices": bridges }),
        StatusCode::OK,
    ))
}

/// # `GET /_matrix/asmux/appservices/status`
async fn bridge_statuses(caller: Caller, services: Arc<Services>) -> Result<Response, Rejection> {
    let bridges = services.management.statuses(&caller).await?;
    Ok(json(
        &serde_json::json!({ "bridges": bridges }),
        StatusCode::OK,
    ))
}

/// # `GET /_matrix/asmux/user/{id}[?create=1]` and `PUT /_matrix/asmux/user/{id}`
async fn get_user(
    Segment(id): Segment,
    put: bool,
    query: String,
    caller: Caller,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    let create = put
        || query_param(&query, "create").is_some_and(|v| {
            matches!(
                v.to_ascii_lowercase().as_str(),
                "1" | "true" | "t" | "y" | "yes"
            )
        });
    let user = services.management.user(&caller, &id, create).await?;
    Ok(json(&user, StatusCode::OK))
}

/// # `PUT /_matrix/asmux/user/{id}/proxy[?regenerate=true]`
async fn put_proxy(
    Segment(id): Segment,
    query: String,
    caller: Caller,
    body: Bytes,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    let settings: serde_json::Map<String, serde_json::Value> = body::parse_json(&body)?;
    let regenerate = query_param(&query, "regenerate")
        .is_some_and(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "t" | "true"));
    let config = services
        .management
        .set_user_proxy(&caller, &id, settings, regenerate)
        .await?;
    Ok(json(&config, StatusCode::OK))
}

/// # `DELETE /_matrix/asmux/room/{roomId}`
async fn delete_room(
    Segment(room_id): Segment,
    caller: Caller,
    services: Arc<Services>,
) -> Result<Response, Rejection> {
    services.management.delete_room(&caller, &room_id).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
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
