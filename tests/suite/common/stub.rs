//! One recording HTTP server that stands in for the homeserver or for a push bridge. It
//! records every request, answers a path from its script when one is set, and otherwise
//! as its role does.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::{json, Value};
use warp::{Filter, Reply};

/// A request the stub received (media bodies are not kept).
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    /// The raw path.
    pub path: String,
    pub query: String,
    pub authorization: Option<String>,
    /// JSON, or the text of a body that is not JSON, or null.
    pub body: Value,
    /// The body as received (lossy UTF-8).
    pub raw_body: String,
    /// Every `name: value` header line as received.
    pub headers: Vec<(String, String)>,
}

impl Recorded {
    /// The decoded txn ID of a transaction PUT.
    pub fn txn_id(&self) -> Option<String> {
        let id = self.path.strip_prefix(TRANSACTIONS)?;
        Some(
            percent_encoding::percent_decode_str(id)
                .decode_utf8_lossy()
                .into_owned(),
        )
    }
}

const TRANSACTIONS: &str = "/_matrix/app/v1/transactions/";

#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    /// whoami from a token table, registration, createRoom, account data, streamed
    /// media, and an echo of anything else (method, path, query, headers, body).
    Homeserver,
    /// Accepts transactions (after refusing `failures` of them); 404 `{}` for the rest.
    Bridge,
}

#[derive(Clone)]
pub struct Stub {
    pub addr: SocketAddr,
    role: Role,
    requests: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<HashMap<String, (u16, String)>>>,
    /// Paths whose requests are answered only once the value turns true.
    held: Arc<Mutex<HashMap<String, tokio::sync::watch::Sender<bool>>>>,
    /// Transactions still to refuse with 500 (bridge role).
    pub failures: Arc<AtomicUsize>,
    /// Access token -> user ID, for whoami (homeserver role).
    users: Arc<Mutex<HashMap<String, String>>>,
    /// Path -> stored account data (homeserver role).
    pub account_data: Arc<Mutex<HashMap<String, Value>>>,
}

impl Stub {
    /// A homeserver stand-in.
    pub async fn homeserver() -> Stub {
        Stub::start(Role::Homeserver, 0).await
    }

    /// A push bridge that accepts every transaction.
    pub async fn bridge() -> Stub {
        Stub::start(Role::Bridge, 0).await
    }

    /// A push bridge that refuses its first `failures` transactions with 500.
    pub async fn failing_bridge(failures: usize) -> Stub {
        Stub::start(Role::Bridge, failures).await
    }

    async fn start(role: Role, failures: usize) -> Stub {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let stub = Stub {
            addr: listener.local_addr().unwrap(),
            role,
            requests: Arc::default(),
            script: Arc::default(),
            held: Arc::default(),
            failures: Arc::new(AtomicUsize::new(failures)),
            users: Arc::default(),
            account_data: Arc::default(),
        };
        let state = stub.clone();
        let route = warp::method()
            .and(warp::path::full())
            .and(warp::query::raw().or(warp::any().map(String::new)).unify())
            .and(warp::header::headers_cloned())
            .and(warp::body::stream())
            .then(
                move |method, path: warp::path::FullPath, query, headers, body| {
                    let state = state.clone();
                    async move {
                        state
                            .respond(method, path.as_str().to_owned(), query, headers, body)
                            .await
                    }
                },
            );
        tokio::spawn(warp::serve(route).incoming(listener).run());
        stub
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answers `path` with `status` and `body` from now on, whatever the role.
    pub fn answer(&self, path: &str, status: u16, body: &str) {
        self.script
            .lock()
            .unwrap()
            .insert(path.into(), (status, body.into()));
    }

    /// Holds the requests to `path` (recorded as they arrive) without an answer until
    /// [`Stub::release`].
    pub fn hold(&self, path: &str) {
        let (held, _) = tokio::sync::watch::channel(false);
        self.held.lock().unwrap().insert(path.into(), held);
    }

    /// Lets the held requests to `path` be answered.
    pub fn release(&self, path: &str) {
        if let Some(held) = self.held.lock().unwrap().remove(path) {
            held.send_replace(true);
        }
    }

    /// Makes `token` resolve to `user_id` in whoami.
    pub fn add_token(&self, token: &str, user_id: &str) {
        self.users
            .lock()
            .unwrap()
            .insert(token.into(), user_id.into());
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }

    pub fn requests_to(&self, path: &str) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.path == path)
            .collect()
    }

    /// Every transaction pushed to it, refused ones included.
    pub fn transactions(&self) -> Vec<Recorded> {
        self.requests()
            .into_iter()
            .filter(|r| r.method == "PUT" && r.path.starts_with(TRANSACTIONS))
            .collect()
    }

    /// Waits (bounded) until `n` transactions arrived.
    pub async fn wait_for_transactions(&self, n: usize) -> Vec<Recorded> {
        for _ in 0..1000 {
            let got = self.transactions();
            if got.len() >= n {
                return got;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!(
            "the push bridge got {} transactions, expected {n}",
            self.transactions().len()
        );
    }

    async fn respond(
        &self,
        method: warp::http::Method,
        path: String,
        query: String,
        headers: warp::http::HeaderMap,
        body: impl futures_util::Stream<Item = Result<impl bytes::Buf, warp::Error>> + Send + 'static,
    ) -> warp::reply::Response {
        let mut body = std::pin::pin!(body);
        let authorization = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        if self.role == Role::Homeserver {
            if let Some(media) = media(&path, &query, &mut body).await {
                return media;
            }
        }
        let mut raw = Vec::new();
        while let Some(Ok(mut chunk)) = body.next().await {
            let n = bytes::Buf::remaining(&chunk);
            raw.extend_from_slice(&bytes::Buf::copy_to_bytes(&mut chunk, n));
        }
        let json_body: Value = if raw.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&raw)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&raw).into_owned()))
        };
        self.requests.lock().unwrap().push(Recorded {
            method: method.to_string(),
            path: path.clone(),
            query: query.clone(),
            authorization: authorization.clone(),
            body: json_body.clone(),
            raw_body: String::from_utf8_lossy(&raw).into_owned(),
            headers: headers
                .iter()
                .map(|(k, v)| {
                    (
                        k.to_string(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect(),
        });
        let held = self.held.lock().unwrap().get(&path).map(|h| h.subscribe());
        if let Some(mut held) = held {
            let _ = held.wait_for(|released| *released).await;
        }
        let scripted = self.script.lock().unwrap().get(&path).cloned();
        let (status, reply) = match (scripted, self.role) {
            (Some((status, text)), _) => {
                return warp::http::Response::builder()
                    .status(status)
                    .header("content-type", "application/json")
                    .body(text.into())
                    .unwrap();
            }
            (None, Role::Bridge) => self.as_bridge(&method, &path),
            (None, Role::Homeserver) => {
                self.as_homeserver(&method, &path, &query, &headers, authorization, json_body)
            }
        };
        warp::reply::with_status(
            warp::reply::json(&reply),
            warp::http::StatusCode::from_u16(status).unwrap(),
        )
        .into_response()
    }

    fn as_bridge(&self, method: &warp::http::Method, path: &str) -> (u16, Value) {
        if method != warp::http::Method::PUT || !path.starts_with(TRANSACTIONS) {
            return (404, json!({}));
        }
        let failing = self
            .failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if failing {
            (
                500,
                json!({"errcode": "M_UNKNOWN", "error": "failing on purpose"}),
            )
        } else {
            (200, json!({}))
        }
    }

    fn as_homeserver(
        &self,
        method: &warp::http::Method,
        path: &str,
        query: &str,
        headers: &warp::http::HeaderMap,
        authorization: Option<String>,
        body: Value,
    ) -> (u16, Value) {
        let token = authorization
            .as_deref()
            .and_then(|a| a.strip_prefix("Bearer "))
            .unwrap_or("");
        if path == "/_matrix/client/v3/account/whoami" {
            return match self.users.lock().unwrap().get(token) {
                Some(user_id) => (200, json!({ "user_id": user_id })),
                None => (401, json!({"errcode": "M_UNKNOWN_TOKEN", "error": "nope"})),
            };
        }
        if path == "/_matrix/client/v3/register" {
            return (200, json!({"user_id": "@x:example.test"}));
        }
        if path.ends_with("/createRoom") {
            let n = self.requests.lock().unwrap().len();
            return (200, json!({"room_id": format!("!created{n}:example.test")}));
        }
        if path.contains("/account_data/") {
            let mut data = self.account_data.lock().unwrap();
            if method == warp::http::Method::PUT {
                data.insert(path.to_owned(), body);
                return (200, json!({}));
            }
            return match data.get(path) {
                Some(v) => (200, v.clone()),
                None => (404, json!({"errcode": "M_NOT_FOUND", "error": "no data"})),
            };
        }
        let headers: serde_json::Map<String, Value> = headers
            .iter()
            .map(|(k, v)| {
                let value = v.to_str().unwrap_or("").to_owned();
                (k.as_str().to_owned(), Value::String(value))
            })
            .collect();
        (
            200,
            json!({"method": method.as_str(), "path": path, "query": query, "headers": headers, "body": body}),
        )
    }
}

/// Media uploads are counted without being kept; downloads of `?size=N` bytes are
/// generated as they stream: neither is ever held in memory.
async fn media(
    path: &str,
    query: &str,
    body: &mut (impl futures_util::Stream<Item = Result<impl bytes::Buf, warp::Error>> + Unpin),
) -> Option<warp::reply::Response> {
    if path.starts_with("/_matrix/media/v3/upload") {
        let mut size = 0usize;
        while let Some(Ok(chunk)) = body.next().await {
            size += bytes::Buf::remaining(&chunk);
        }
        let reply = json!({"content_uri": "mxc://example.test/up", "size": size});
        return Some(warp::reply::json(&reply).into_response());
    }
    if path.starts_with("/_matrix/media/v3/download/") {
        let size: usize = form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == "size")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let chunk = bytes::Bytes::from(vec![7u8; 64 * 1024]);
        let chunks = size / chunk.len();
        let stream = futures_util::stream::iter(
            (0..chunks).map(move |_| Ok::<_, std::io::Error>(chunk.clone())),
        );
        let mut reply = warp::reply::stream(stream).into_response();
        reply
            .headers_mut()
            .insert("content-length", (chunks * 64 * 1024).into());
        reply.headers_mut().insert(
            "content-type",
            warp::http::HeaderValue::from_static("application/octet-stream"),
        );
        return Some(reply);
    }
    None
}
