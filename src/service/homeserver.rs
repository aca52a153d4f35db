//! The client-server API calls asmux makes on its own behalf: resolving access tokens and
//! registering bridge bots.

use std::time::Duration;

use serde_json::{json, Value};

use crate::config::Config;
use crate::error::Error;
use crate::http_client::{full_body, HttpClient, RequestError};
use crate::secret::{token_digest, Secret};

/// How long the user of an access token is remembered.
const WHOAMI_TTL: Duration = Duration::from_secs(300);
/// Access tokens remembered at most.
const WHOAMI_CAPACITY: u64 = 10_000;

/// The homeserver, as seen by asmux's own appservice user.
pub struct Homeserver {
    client: HttpClient,
    /// Base URL without a trailing slash.
    base: String,
    as_token: Secret,
    timeout: Duration,
    /// SHA-256 of an access token -> its user ID, as the homeserver said.
    users: moka::future::Cache<[u8; 32], String>,
}

/// Why the homeserver gave no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum HomeserverError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("homeserver answered {status}: {body}")]
    Status { status: u16, body: String },
}

impl Homeserver {
    pub fn new(config: &Config, client: HttpClient) -> Homeserver {
        Homeserver {
            client,
            base: config.homeserver.address.trim_end_matches('/').to_owned(),
            as_token: config.appservice.as_token.clone(),
            timeout: Duration::from_secs(config.homeserver.timeout_seconds),
            users: moka::future::Cache::builder()
                .max_capacity(WHOAMI_CAPACITY)
                .time_to_live(WHOAMI_TTL)
                .build(),
        }
    }

    /// [`Homeserver::whoami`], remembered for a few minutes: the management API's Matrix
    /// callers and the DM endpoint's owners present the same tokens again and again.
    pub async fn user_of(&self, access_token: &str) -> Result<Option<String>, HomeserverError> {
        let key = token_digest(access_token);
        if let Some(user_id) = self.users.get(&key).await {
            return Ok(Some(user_id));
        }
        let user_id = self.whoami(access_token).await?;
        if let Some(user_id) = &user_id {
            self.users.insert(key, user_id.clone()).await;
        }
        Ok(user_id)
    }

    /// [`Homeserver::user_of`] for a request being answered: the user ID, 403
    /// `M_UNKNOWN_TOKEN` saying `refused` when the homeserver does not know the token, or
    /// 502 when it cannot be asked.
    pub async fn caller(&self, access_token: &str, refused: &'static str) -> Result<String, Error> {
        self.user_of(access_token)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "whoami failed");
                Error::BadGateway
            })?
            .ok_or(Error::UnknownToken(refused))
    }

    /// The user ID an access token belongs to; `None` when the homeserver refuses it.
    pub async fn whoami(&self, access_token: &str) -> Result<Option<String>, HomeserverError> {
        let (status, body) = self
            .call(
                http::Method::GET,
                "/_matrix/client/v3/account/whoami",
                access_token,
                None,
            )
            .await?;
        match status.as_u16() {
            200 => Ok(body
                .get("user_id")
                .and_then(Value::as_str)
                .map(str::to_owned)),
            401 | 403 => Ok(None),
            other => Err(HomeserverError::Status {
                status: other,
                body: body.to_string(),
            }),
        }
    }

    /// Registers `localpart` as an appservice user; an existing user counts as success.
    pub async fn register_appservice_user(&self, localpart: &str) -> Result<(), HomeserverError> {
        let body = json!({"type": "m.login.application_service", "username": localpart});
        let (status, body) = self
            .call(
                http::Method::POST,
                "/_matrix/client/v3/register?kind=user",
                self.as_token.expose(),
                Some(body),
            )
            .await?;
        let in_use = body.get("errcode").and_then(Value::as_str) == Some("M_USER_IN_USE");
        if status.is_success() || in_use {
            Ok(())
        } else {
            Err(HomeserverError::Status {
                status: status.as_u16(),
                body: body.to_string(),
            })
        }
    }

    /// A user's account data of `kind`; `None` when it was never set.
    pub async fn account_data(
        &self,
        token: &str,
        user_id: &str,
        kind: &str,
    ) -> Result<Option<Value>, HomeserverError> {
        let path = account_data_path(user_id, kind);
        let (status, body) = self.call(http::Method::GET, &path, token, None).await?;
        match status.as_u16() {
            200 => Ok(Some(body)),
            404 => Ok(None),
            other => Err(HomeserverError::Status {
                status: other,
                body: body.to_string(),
            }),
        }
    }

    /// Replaces a user's account data of `kind`.
    pub async fn set_account_data(
        &self,
        token: &str,
        user_id: &str,
        kind: &str,
        value: &Value,
    ) -> Result<(), HomeserverError> {
        let path = account_data_path(user_id, kind);
        let (status, body) = self
            .call(http::Method::PUT, &path, token, Some(value.clone()))
            .await?;
        if status.is_success() {
            Ok(())
        } else {
            Err(HomeserverError::Status {
                status: status.as_u16(),
                body: body.to_string(),
            })
        }
    }

    async fn call(
        &self,
        method: http::Method,
        path_and_query: &str,
        token: &str,
        body: Option<Value>,
    ) -> Result<(http::StatusCode, Value), HomeserverError> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path_and_query}", self.base))
            .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(full_body(body.map(|b| b.to_string()).unwrap_or_default()))
            .map_err(|e| RequestError::Invalid(e.to_string()))?;
        let response = self.client.send_buffered(request, self.timeout).await?;
        let json = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
        Ok((response.status, json))
    }
}

fn account_data_path(user_id: &str, kind: &str) -> String {
    use percent_encoding::utf8_percent_encode;
    format!(
        "/_matrix/client/v3/user/{}/account_data/{}",
        utf8_percent_encode(user_id, crate::http_client::URL_COMPONENT),
        utf8_percent_encode(kind, crate::http_client::URL_COMPONENT)
    )
}
