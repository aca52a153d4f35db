//! The client-server API proxy (spec 5): bridges send all their Matrix traffic through
//! asmux, which swaps their token for its own, keeps them inside their namespace and
//! streams bodies both ways. Only the few endpoints whose JSON must be read or rewritten
//! are buffered, with a size limit.

mod bodies;
mod counters;
mod dms;
mod endpoint;
mod guard;
mod headers;
mod login;
mod ping;
mod target;
pub mod upstream;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode};
use serde_json::Value;

use crate::config::Config;
use crate::error::Error;
use crate::http_client::{boxed_body, collect_limited, full_body, Body, HttpClient};
use crate::matrix::Namespace;
use crate::secret::{presented_token, Secret};
use crate::service::delivery::Delivery;
use crate::service::homeserver::Homeserver;
use crate::store::{Bridge, Store};
use counters::CounterMemo;
use endpoint::Endpoint;
use guard::Masquerade;
use headers::{bearer_header, strip_hop_by_hop};
use ping::msc2659_target;
use target::Target;
use upstream::{Upstream, UpstreamDriver};

/// Largest request or response body read into memory for the endpoints asmux rewrites.
pub const MAX_REWRITE_BODY: usize = 1024 * 1024;
/// Query parameter that lets a bridge's batch sends include the owner; only asmux sets it.
const ALSO_ALLOW_USER: &str = "com.beeper.also_allow_user";
/// The header naming the bridge a request comes from; only asmux sets it.
const X_BEEPER_BRIDGE: HeaderName = HeaderName::from_static("x-beeper-bridge");
/// A request to proxy, as received.
pub struct ProxyRequest {
    pub method: Method,
    /// The raw (percent-encoded) path.
    pub path: String,
    /// The raw query string, without `?`.
    pub query: String,
    pub headers: HeaderMap,
    pub body: Body,
    /// What the proxy keeps for the connection the request came on.
    pub connection: ConnectionState,
}

/// What the proxy keeps for one client connection between its requests.
#[derive(Clone)]
pub struct ConnectionState {
    upstream: Upstream,
    counters: CounterMemo,
}

impl ConnectionState {
    /// The state of a new connection, and the driver of its homeserver connection, to be
    /// polled by the connection's task (see [`upstream`]).
    pub fn new() -> (ConnectionState, UpstreamDriver) {
        let (upstream, driver) = upstream::upstream();
        let state = ConnectionState {
            upstream,
            counters: CounterMemo::default(),
        };
        (state, driver)
    }
}

pub type ProxyResponse = http::Response<Body>;

/// The proxy service.
pub struct Proxy {
    store: Arc<Store>,
    delivery: Arc<Delivery>,
    homeserver: Arc<Homeserver>,
    client: HttpClient,
    /// Homeserver base URL without a trailing slash.
    base: String,
    /// The same, split for requests on an [`Upstream`]; `None` when the address is no
    /// URI (config validation refuses those).
    origin: Option<Origin>,
    /// `Bearer {as_token}`, built once: every bridge request carries it.
    as_authorization: Option<HeaderValue>,
    /// The same for the double-puppet registration's token, when it is set up.
    double_puppet_authorization: Option<HeaderValue>,
    namespace: Namespace,
    login_shared_secret: Option<Secret>,
    /// One lock per user whose `m.direct` the DM endpoint rewrites.
    dm_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

/// The homeserver's address as a connection to it needs it.
struct Origin {
    /// Scheme and authority, to connect to.
    uri: http::Uri,
    /// The `Host` header of every request.
    host: HeaderValue,
    /// The address's path, without a trailing slash, before every request's path.
    path_prefix: String,
}

impl Origin {
    fn parse(base: &str) -> Option<Origin> {
        let uri: http::Uri = base.parse().ok()?;
        let authority = uri.authority()?.clone();
        Some(Origin {
            host: HeaderValue::from_str(authority.as_str()).ok()?,
            path_prefix: uri.path().trim_end_matches('/').to_owned(),
            uri: http::Uri::builder()
                .scheme(uri.scheme()?.clone())
                .authority(authority)
                .path_and_query("/")
                .build()
                .ok()?,
        })
    }
}

impl Proxy {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        delivery: Arc<Delivery>,
        homeserver: Arc<Homeserver>,
        client: HttpClient,
    ) -> Proxy {
        let base = config.homeserver.address.trim_end_matches('/').to_owned();
        Proxy {
            store,
            delivery,
            homeserver,
            client,
            origin: Origin::parse(&base),
            base,
            as_authorization: bearer_header(&config.appservice.as_token),
            double_puppet_authorization: config.double_puppet_token().and_then(bearer_header),
            namespace: config.namespace(),
            login_shared_secret: config.homeserver.login_shared_secret.clone(),
            dm_locks: Mutex::default(),
        }
    }

    pub async fn handle(&self, req: ProxyRequest) -> Result<ProxyResponse, Error> {
        let target = Target::read(&req.path)?;
        if dms::is_dms_path(&target.decoded) && matches!(req.method, Method::PUT | Method::PATCH) {
            return self.dms(req).await;
        }
        let bridge = self.bridge_of(&req)?;
        let Some(counted) = &bridge else {
            return self.proxy(req, None, &target).await;
        };
        let counters = (req.connection.counters).counters(
            &self.delivery.metrics,
            counted,
            &req.method,
            &target.decoded,
        );
        counters.received.inc();
        let response = self.proxy(req, bridge, &target).await;
        counters.handled.inc();
        response
    }

    async fn proxy(
        &self,
        req: ProxyRequest,
        bridge: Option<Arc<Bridge>>,
        target: &Target,
    ) -> Result<ProxyResponse, Error> {
        if let Some(id) = msc2659_target(&target.decoded).filter(|_| req.method == Method::POST) {
            return self.appservice_ping(bridge.as_deref(), id, req.body).await;
        }
        let endpoint = Endpoint::of(&req.method, target)?;
        let exact = endpoint::is_exactly(&endpoint, target);
        let mut headers = req.headers;
        strip_hop_by_hop(&mut headers);
        // Only asmux says which bridge a request comes from.
        headers.remove(X_BEEPER_BRIDGE);
        let (query, acting) = match &bridge {
            Some(bridge) => {
                bodies::refuse_form_bodies(&headers)?;
                let (query, acting) = self.bridge_query(bridge, &req.query, target, &endpoint)?;
                headers.insert(header::AUTHORIZATION, self.authorization(&acting.0)?);
                headers.insert(
                    X_BEEPER_BRIDGE,
                    HeaderValue::from_str(&bridge.name()).map_err(|_| {
                        Error::internal("bridge name is no header value", bridge.name())
                    })?,
                );
                (query, Some(acting))
            }
            None => (passthrough_query(&req.query), None),
        };

        let body = match (&endpoint, &bridge) {
            (Endpoint::Alias(alias), Some(bridge)) => {
                guard::own_alias(&self.namespace, bridge, alias)?;
                req.body
            }
            (endpoint, bridge) if self.reads_body(endpoint, bridge.as_deref(), exact) => {
                self.checked_body(endpoint, bridge.as_deref(), exact, &mut headers, req.body)
                    .await?
            }
            _ => req.body,
        };

        let response = self
            .forward(
                &req.method,
                &req.path,
                &query,
                headers,
                body,
                &req.connection.upstream,
            )
            .await?;
        match (endpoint, bridge, acting) {
            (Endpoint::CreateRoom, Some(bridge), Some((masquerade, user_id)))
                if response.status().is_success() =>
            {
                // The creator is joined; a room created as the owner has no user of the
                // bridge in it yet, and is owned until one of them says otherwise.
                let member = (masquerade == Masquerade::Namespace).then_some(user_id);
                self.register_created_room(&bridge, member.as_deref(), response)
                    .await
            }
            _ => Ok(response),
        }
    }

    /// The query to forward for a bridge's request, rebuilt from asmux's reading of it
    /// (each parameter asmux checked appears once, as checked), and whom it acts as.
    fn bridge_query(
        &self,
        bridge: &Bridge,
        raw_query: &str,
        target: &Target,
        endpoint: &Endpoint,
    ) -> Result<(String, (Masquerade, String)), Error> {
        let mut params = target::read_query(raw_query)?;
        let acting = guard::acting_as(&self.namespace, bridge, &params, target)?;
        // Synapse registers a guest for `kind=guest` before it looks at the body.
        let kind = target::single(&params, "kind")?;
        if *endpoint == Endpoint::Register && kind.is_some_and(|k| k != "user") {
            return Err(Error::Forbidden(
                "A bridge registers users of its namespace only".into(),
            ));
        }
        params.retain(|(k, _)| k != "access_token" && k != ALSO_ALLOW_USER && k != "user_id");
        params.push(("user_id".into(), acting.1.clone()));
        if target.decoded.ends_with("/batch_send") {
            params.push((
                ALSO_ALLOW_USER.into(),
                self.namespace.user_id(&bridge.owner),
            ));
        }
        Ok((target::write_query(&params), acting))
    }

    /// The `Authorization` a bridge's request is forwarded with: asmux's token, or the
    /// double-puppet registration's to act as the owner.
    fn authorization(&self, masquerade: &Masquerade) -> Result<HeaderValue, Error> {
        let value = match masquerade {
            Masquerade::Namespace => &self.as_authorization,
            // Only the double-puppet registration may name users outside asmux's
            // namespace; the guard allows the bridge's own owner.
            Masquerade::Owner => match &self.double_puppet_authorization {
                Some(value) => return Ok(value.clone()),
                None => {
                    return Err(Error::Forbidden(
                        "Double puppeting is not set up on this asmux (run asmux \
                         generate-registration and load doublepuppet.yaml)"
                            .into(),
                    ))
                }
            },
        };
        value
            .clone()
            .ok_or_else(|| Error::internal("asmux's as_token is no header value", "refused"))
    }

    /// The bridge whose token the request carries, `None` for any other token. A token
    /// that starts like a bridge token (`{uuid}-`) must belong to one.
    fn bridge_of(&self, req: &ProxyRequest) -> Result<Option<Arc<Bridge>>, Error> {
        let mut authorizations = req.headers.get_all(header::AUTHORIZATION).iter();
        let authorization = authorizations.next().and_then(|v| v.to_str().ok());
        if authorizations.next().is_some() {
            return Err(Error::InvalidParam(
                "A request may carry one Authorization header".into(),
            ));
        }
        let token = presented_token(authorization, &req.query);
        let Some(token) = token.filter(|t| is_bridge_token(t)) else {
            return Ok(None);
        };
        match self.store.bridge_by_token(&token)? {
            Some(bridge) => Ok(Some(bridge)),
            None => Err(Error::UnknownToken("Invalid access token")),
        }
    }

    async fn forward(
        &self,
        method: &Method,
        path: &str,
        query: &str,
        mut headers: HeaderMap,
        body: Body,
        upstream: &Upstream,
    ) -> Result<ProxyResponse, Error> {
        let separator = if query.is_empty() { "" } else { "?" };
        let uri = match &self.origin {
            Some(origin) => {
                headers.insert(header::HOST, origin.host.clone());
                format!("{}{path}{separator}{query}", origin.path_prefix)
            }
            None => format!("{}{path}{separator}{query}", self.base),
        };
        let mut request = http::Request::builder()
            .method(method.clone())
            .uri(uri)
            .body(body)
            .map_err(|_| Error::BadRequest("Invalid request".into()))?;
        *request.headers_mut() = headers;
        let response = match &self.origin {
            Some(origin) => upstream.send(&self.client, &origin.uri, request).await,
            None => self.client.send(request).await,
        };
        let response = response.map_err(|e| {
            tracing::warn!(error = %e, "homeserver request failed");
            Error::BadGateway
        })?;
        let (mut parts, body) = response.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(http::Response::from_parts(parts, boxed_body(body)))
    }

    /// Reads the `createRoom` answer and makes the bridge an owner of the new room.
    async fn register_created_room(
        &self,
        bridge: &Bridge,
        creator: Option<&str>,
        response: ProxyResponse,
    ) -> Result<ProxyResponse, Error> {
        let (parts, body) = response.into_parts();
        let body = read_limited(body).await?;
        if let Some(room_id) = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("room_id").and_then(Value::as_str).map(str::to_owned))
        {
            self.store.add_room_owner(&room_id, bridge.id, creator)?;
            self.store.flush().await?;
        }
        Ok(http::Response::from_parts(parts, full_body(body)))
    }
}

/// Whether `token` has the shape of a bridge token: a UUID, `-`, the secret.
fn is_bridge_token(token: &str) -> bool {
    token.len() > 37 && token.as_bytes()[36] == b'-' && uuid::Uuid::try_parse(&token[..36]).is_ok()
}

/// The query of a request that carries no bridge token: as received, but for the
/// parameter only asmux may set. asmux adds no credential to such a request, so its query
/// is otherwise none of its business.
fn passthrough_query(raw: &str) -> String {
    let mut pairs = form_urlencoded::parse(raw.as_bytes());
    if !pairs.any(|(k, _)| k == ALSO_ALLOW_USER) {
        return raw.to_owned();
    }
    let kept: Vec<(String, String)> = form_urlencoded::parse(raw.as_bytes())
        .into_owned()
        .filter(|(k, _)| k != ALSO_ALLOW_USER)
        .collect();
    target::write_query(&kept)
}

/// Reads a body of at most [`MAX_REWRITE_BODY`] bytes.
async fn read_limited(body: Body) -> Result<Bytes, Error> {
    Ok(collect_limited(body, MAX_REWRITE_BODY).await?)
}

fn json_response(status: StatusCode, value: &Value) -> ProxyResponse {
    let mut response = http::Response::new(full_body(value.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_homeserver_address_splits_into_connection_host_and_path() {
        let origin = Origin::parse("https://matrix.example.test:8448/synapse").unwrap();
        assert_eq!(origin.uri, "https://matrix.example.test:8448/");
        assert_eq!(origin.host, "matrix.example.test:8448");
        assert_eq!(origin.path_prefix, "/synapse");
        let origin = Origin::parse("http://127.0.0.1:8008").unwrap();
        assert_eq!(
            (origin.host.to_str().unwrap(), origin.path_prefix.as_str()),
            ("127.0.0.1:8008", "")
        );
        assert!(Origin::parse("not a url").is_none());
    }

    #[test]
    fn bridge_tokens_are_recognised_by_shape() {
        let id = uuid::Uuid::new_v4();
        assert!(is_bridge_token(&format!("{id}-secret")));
        assert!(!is_bridge_token(&format!("{id}-")));
        assert!(!is_bridge_token("syt_YWxpY2U_abcdefghijklmnopqrst_0abcde"));
        assert!(!is_bridge_token("00000000-0000-0000-0000-00000000000Z-x"));
    }
}
