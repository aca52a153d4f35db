//! The pooled HTTP client for every outgoing request: to the homeserver and to bridges.

use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;

/// Bytes of a response body read into memory at most, for the small JSON answers asmux
/// reads itself (whoami, register, bridge pings).
pub const MAX_JSON_RESPONSE_BYTES: usize = 1024 * 1024;

/// Characters percent-encoded in a path segment or query value: everything but the
/// unreserved characters of RFC 3986.
pub const URL_COMPONENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// An outgoing request body.
pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A pooled client for http:// and https:// (rustls, the system's root certificates).
#[derive(Clone)]
pub struct HttpClient {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    connector: HttpsConnector<HttpConnector>,
}

/// An HTTP/1 connection outside the pool, running while its owner polls it.
pub type RunningConnection = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Such a connection and the sender its requests go in through.
pub type OwnConnection = (
    hyper::client::conn::http1::SendRequest<Body>,
    RunningConnection,
);

/// Why an outgoing request produced no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("timed out")]
    Timeout,
    #[error("response body over {MAX_JSON_RESPONSE_BYTES} bytes or unreadable")]
    Body,
}

/// A response whose body was read into memory.
pub struct BufferedResponse {
    pub status: http::StatusCode,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl HttpClient {
    pub fn new() -> std::io::Result<HttpClient> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_nodelay(true);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()?
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(https.clone());
        Ok(HttpClient {
            client,
            connector: https,
        })
    }

    /// Opens a connection of its own to `uri`'s host, with the pool's connector (same
    /// timeout, TLS and `TCP_NODELAY`). Requests sent on it need an origin-form URI and
    /// a `Host` header.
    pub async fn connect(&self, uri: &http::Uri) -> Result<OwnConnection, RequestError> {
        let mut connector = self.connector.clone();
        let io = tower_service::Service::call(&mut connector, uri.clone())
            .await
            .map_err(|e| RequestError::Connect(error_chain(e.as_ref())))?;
        let (sender, connection) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(|e| RequestError::Connect(error_chain(&e)))?;
        let connection = Box::pin(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "homeserver connection ended with an error");
            }
        });
        Ok((sender, connection))
    }

    /// Sends `request` and returns the response with its body still streaming. Only the
    /// connection has a timeout: a long-polling `/sync` may take as long as it asks for.
    pub async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<hyper::body::Incoming>, RequestError> {
        self.client
            .request(request)
            .await
            .map_err(|e| RequestError::Connect(error_chain(&e)))
    }

    /// Sends `request` and reads the whole (small) response body, all within `timeout`.
    pub async fn send_buffered(
        &self,
        request: http::Request<Body>,
        timeout: Duration,
    ) -> Result<BufferedResponse, RequestError> {
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| RequestError::Connect(error_chain(&e)))?;
            let (parts, body) = response.into_parts();
            let body = collect_limited(body, MAX_JSON_RESPONSE_BYTES)
                .await
                .map_err(|_| RequestError::Body)?;
            Ok(BufferedResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| RequestError::Timeout)?
    }
}

/// Why a body could not be read whole.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("body over the size limit")]
    TooLarge,
    #[error("body unreadable")]
    Unreadable,
}

/// Reads `body` into memory, refusing it as soon as it passes `limit` bytes. (Not
/// `http_body_util::Limited`: over a body whose error is already boxed, its futures are
/// ones rustc cannot prove `Send`, which warp handlers must be.)
pub async fn collect_limited<B>(mut body: B, limit: usize) -> Result<Bytes, BodyError>
where
    B: http_body::Body<Data = Bytes> + Unpin,
{
    let mut buf = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| BodyError::Unreadable)?;
        if let Ok(data) = frame.into_data() {
            if buf.len() + data.len() > limit {
                return Err(BodyError::TooLarge);
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(buf.freeze())
}

/// A request body from bytes in memory.
pub fn full_body(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed()
}

/// Any body whose errors can be boxed (hyper's, warp's), as a [`Body`].
pub fn boxed_body<B>(body: B) -> Body
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    body.map_err(Into::into).boxed()
}

/// An error and its sources on one line: hyper's top-level messages alone say little.
pub fn error_chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        // Some errors repeat their cause in their own text; say it once.
        let text = cause.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = cause.source();
    }
    out
}
