//! Provisioning and managing bridges and their owners (spec 6): the logic behind the
//! management API, also used directly by the CLI when the server is not running.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use data_encoding::BASE32_NOPAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::config::{is_http_url, Config};
use crate::error::Error;
use crate::matrix::{is_valid_name, Namespace};
use crate::operator::registration::BridgeRegistration;
use crate::secret::{bearer, urlsafe_token, Secret};
use crate::service::bridge_requests::{self, BridgeStatus};
use crate::service::delivery::Delivery;
use crate::service::homeserver::Homeserver;
use crate::service::user_proxy;
use crate::store::{Bridge, ConfigPassword, Store, User};

/// The proxy settings stored for `user`, as JSON.
fn stored_proxy_config(user: &User) -> Result<Option<Value>, Error> {
    user.proxy_config
        .as_ref()
        .map(|text| {
            serde_json::from_str(text.expose())
                .map_err(|e| Error::internal("stored proxy settings are not JSON", e))
        })
        .transpose()
}

/// Bounds and default of a config password's lifetime, in seconds.
const CONFIG_PASSWORD_LIFETIME: (u64, u64, u64) = (30, 300, 3600);

/// Who is calling the management API.
#[derive(Debug, Clone)]
pub enum Caller {
    /// The holder of `mux.shared_secret`.
    Root,
    /// A bridge owner, limited to their own bridges and record.
    User(Arc<User>),
}

/// How a request names a bridge.
#[derive(Debug, Clone)]
pub enum BridgeRef {
    Id(Uuid),
    Name { owner: String, prefix: String },
}

impl BridgeRef {
    /// Parses the `{uuid}` path form.
    pub fn id(raw: &str) -> Result<BridgeRef, Error> {
        Uuid::try_parse(raw)
            .map(BridgeRef::Id)
            .map_err(|_| Error::BadRequest("Invalid UUID".into()))
    }

    /// The `{owner}/{prefix}` path form. Any name is looked up (imported bridges may
    /// have names made by hand); new bridges are checked by [`check_new_name`].
    pub fn name(owner: &str, prefix: &str) -> BridgeRef {
        BridgeRef::Name {
            owner: owner.to_owned(),
            prefix: prefix.to_owned(),
        }
    }
}

/// The names the original allowed for new bridges.
fn check_new_name(owner: &str, prefix: &str) -> Result<(), Error> {
    if !is_valid_name(owner) {
        return Err(Error::BadRequest(
            "Appservice owner must match [a-z0-9=.-]{1,32}".into(),
        ));
    }
    if !is_valid_name(prefix) {
        return Err(Error::BadRequest(
            "Appservice prefix must match [a-z0-9=.-]{1,32}".into(),
        ));
    }
    Ok(())
}

/// Body of `PUT /appservice/...`; absent fields keep their current value.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct ProvisionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bot: Option<String>,
    #[serde(default)]
    pub generate_config: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_password_lifetime: Option<i64>,
}

/// A user record as the API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRecord {
    pub id: String,
    pub api_token: String,
    pub login_token: String,
}

/// One line of `GET /appservices`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BridgeSummary {
    pub id: Uuid,
    pub owner: String,
    pub prefix: String,
    pub bot: String,
    pub push: bool,
    pub address: String,
}

/// The management service.
pub struct Management {
    store: Arc<Store>,
    homeserver: Arc<Homeserver>,
    namespace: Namespace,
    exclusive: bool,
    shared_secret: Secret,
    delivery: Arc<Delivery>,
}

impl Management {
    pub fn new(
        config: &Config,
        store: Arc<Store>,
        homeserver: Arc<Homeserver>,
        delivery: Arc<Delivery>,
    ) -> Self {
        Management {
            store,
            homeserver,
            delivery,
            namespace: config.namespace(),
            exclusive: config.appservice.namespace.exclusive,
            shared_secret: config.mux.shared_secret.clone(),
        }
    }

    /// The store, for the CLI working on the data directory.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Resolves an `Authorization` header holding the shared secret or a user's api_token.
    pub fn caller_from_bearer(&self, header: Option<&str>) -> Result<Caller, Error> {
        let token = bearer_token(header)?;
        if self.shared_secret.matches(token) {
            return Ok(Caller::Root);
        }
        match self.store.user_by_api_token(token)? {
            Some(user) => Ok(Caller::User(user)),
            None => Err(Error::UnknownToken("Invalid authorization token")),
        }
    }

    /// Resolves an `Authorization` header holding a Matrix access token of a local user
    /// who has a record here.
    pub async fn caller_from_matrix_token(&self, header: Option<&str>) -> Result<Caller, Error> {
        let token = bearer_token(header)?;
        let user_id = self
            .homeserver
            .user_of(token)
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, "whoami failed");
                Error::BadGateway
            })?
            .ok_or(Error::UnknownToken("Invalid authorization token"))?;
        let user = match self.namespace.local_user(&user_id) {
            Some(localpart) => self.store.user(localpart)?,
            None => None,
        };
        user.map(Caller::User).ok_or(Error::Forbidden(
            "This Matrix user has no account on this asmux".into(),
        ))
    }

    /// `PUT /appservice/...`: creates the bridge (`true`) or updates it (`false`).
    pub async fn provision(
        &self,
        caller: &Caller,
        target: &BridgeRef,
        request: ProvisionRequest,
    ) -> Result<(BridgeRegistration, bool), Error> {
        if let Some(address) = &request.address {
            if !address.is_empty() && !is_http_url(address) {
                return Err(Error::BadRequest(
                    "address must be an http(s) URL or empty".into(),
                ));
            }
        }
        if let Some(bot) = &request.bot {
            if bot.is_empty()
                || !bot
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._=-".contains(&b))
            {
                return Err(Error::BadRequest(
                    "bot must be a lowercase Matrix localpart".into(),
                ));
            }
        }
        let lifetime = request
            .config_password_lifetime
            .map(|s| {
                s.clamp(
                    CONFIG_PASSWORD_LIFETIME.0 as i64,
                    CONFIG_PASSWORD_LIFETIME.2 as i64,
                ) as u64
            })
            .unwrap_or(CONFIG_PASSWORD_LIFETIME.1);
        let password = request
            .generate_config
            .then(|| new_config_password(Some(lifetime)));

        if let Some(existing) = self.find(caller, target)? {
            let stored = password.as_ref().map(|(_, stored)| stored.clone());
            let bridge = self.update(caller, existing, request, stored).await?;
            let registration = self.registration_of(&bridge, password, lifetime)?;
            return Ok((registration, false));
        }

        let BridgeRef::Name { owner, prefix } = target else {
            return Err(self.not_found(caller));
        };
        check_new_name(owner, prefix)?;
        let owner_user = match caller {
            Caller::Root => self.store.create_user(owner)?,
            Caller::User(user) => user.clone(),
        };
        let bridge = Bridge {
            id: Uuid::new_v4(),
            owner: owner.clone(),
            prefix: prefix.clone(),
            bot: request.bot.unwrap_or_else(|| "bot".into()),
            address: request.address.unwrap_or_default(),
            push: request.push.unwrap_or(true),
            hs_token: urlsafe_token(48),
            as_token: urlsafe_token(20),
            push_key: None,
            config_password: password.as_ref().map(|(_, stored)| stored.clone()),
            created_at: now().as_millis() as u64,
        };
        let (bridge, created) = self.store.insert_bridge(bridge)?;
        self.flush().await?;
        if created {
            tracing::info!(bridge = %bridge.name(), id = %bridge.id, push = bridge.push, "provisioned bridge");
            let bot = self
                .namespace
                .bot_localpart(&bridge.owner, &bridge.prefix, &bridge.bot);
            if let Err(e) = self.homeserver.register_appservice_user(&bot).await {
                tracing::warn!(bridge = %bridge.name(), error = %e, "could not register the bridge bot");
            }
        }
        let registration =
            BridgeRegistration::new(&bridge, &owner_user, &self.namespace, self.exclusive);
        Ok((with_password(registration, password, lifetime), created))
    }

    /// Changes what a provisioning request changes on an existing bridge: its address,
    /// its mode, its config password. The current record is changed, not `existing`.
    async fn update(
        &self,
        caller: &Caller,
        existing: Arc<Bridge>,
        request: ProvisionRequest,
        password: Option<ConfigPassword>,
    ) -> Result<Arc<Bridge>, Error> {
        let changes = request
            .address
            .as_ref()
            .is_some_and(|a| *a != existing.address)
            || request.push.is_some_and(|p| p != existing.push)
            || password.is_some();
        if !changes {
            return Ok(existing);
        }
        let updated = self
            .store
            .modify_bridge(existing.id, |bridge| {
                if let Some(address) = request.address {
                    bridge.address = address;
                }
                if let Some(push) = request.push {
                    bridge.push = push;
                }
                if password.is_some() {
                    bridge.config_password = password;
                }
            })?
            .ok_or_else(|| self.not_found(caller))?;
        self.flush().await?;
        // A new address or mode may unblock queued deliveries at once; a push worker may
        // be pausing between attempts at the old address.
        if updated.push {
            self.delivery.restart(updated.id);
        } else {
            self.delivery.wake(updated.id);
        }
        Ok(updated)
    }

    /// `GET /appservice/...`.
    pub fn registration(
        &self,
        caller: &Caller,
        target: &BridgeRef,
    ) -> Result<BridgeRegistration, Error> {
        let bridge = self.visible(caller, target)?;
        self.registration_of(&bridge, None, 0)
    }

    /// `DELETE /appservice/...`: removes the bridge, its queue and its rooms.
    pub async fn delete(&self, caller: &Caller, target: &BridgeRef) -> Result<Arc<Bridge>, Error> {
        let bridge = self.visible(caller, target)?;
        let id = bridge.id;
        self.off_thread(move |store, _| Ok(store.delete_bridge(id)?))
            .await?;
        self.delivery.forget(bridge.id);
        self.flush().await?;
        tracing::info!(bridge = %bridge.name(), id = %bridge.id, "deleted bridge");
        Ok(bridge)
    }

    /// `DELETE /appservice/.../queue`: drops what waits for the bridge, on purpose; the
    /// number of sub-transactions dropped.
    pub async fn clear_queue(&self, caller: &Caller, target: &BridgeRef) -> Result<u64, Error> {
        let bridge = self.visible(caller, target)?;
        let cleared = bridge.clone();
        let dropped = self
            .off_thread(move |store, delivery| {
                Ok(store.clear_queue(cleared.id, |body| {
                    delivery
                        .reporter
                        .dropped(&cleared, body, "queue cleared by the operator")
                })?)
            })
            .await?;
        self.flush().await?;
        // The worker may be pausing between attempts at what was just dropped.
        self.delivery.restart(bridge.id);
        tracing::info!(bridge = %bridge.name(), dropped, "cleared the queue");
        Ok(dropped)
    }

    /// `POST /appservice/.../ping`: the bridge's GlobalBridgeState.
    pub async fn ping(
        &self,
        caller: &Caller,
        target: &BridgeRef,
    ) -> Result<serde_json::Value, Error> {
        let bridge = self.visible(caller, target)?;
        Ok(bridge_requests::global_state(&self.delivery, &bridge).await)
    }

    /// `GET /appservice/.../status`: connection, queue and last state.
    pub async fn status(&self, caller: &Caller, target: &BridgeRef) -> Result<BridgeStatus, Error> {
        let bridge = self.visible(caller, target)?;
        self.off_thread(move |_, delivery| bridge_requests::status(delivery, &bridge))
            .await
    }

    /// Mxauth `POST /appservice/.../exec/{command}`: `(status, data)`.
    pub async fn exec(
        &self,
        caller: &Caller,
        target: &BridgeRef,
        command: &str,
        body: serde_json::Value,
    ) -> Result<(u16, serde_json::Value), Error> {
        let bridge = self.visible(caller, target)?;
        bridge_requests::exec(&self.delivery, &bridge, command, body).await
    }

    /// `GET /appservices/status`: the status of every bridge the caller may see.
    pub async fn statuses(&self, caller: &Caller) -> Result<Vec<BridgeStatus>, Error> {
        let owner = match caller {
            Caller::Root => None,
            Caller::User(user) => Some(user.id.clone()),
        };
        self.off_thread(move |store, delivery| {
            store
                .bridges(owner.as_deref())?
                .iter()
                .map(|b| bridge_requests::status(delivery, b))
                .collect()
        })
        .await
    }

    /// `GET /appservices`: every bridge the caller may see.
    pub fn list(&self, caller: &Caller) -> Result<Vec<BridgeSummary>, Error> {
        let owner = match caller {
            Caller::Root => None,
            Caller::User(user) => Some(user.id.as_str()),
        };
        let bridges = self.store.bridges(owner)?;
        Ok(bridges
            .iter()
            .map(|b| BridgeSummary {
                id: b.id,
                owner: b.owner.clone(),
                prefix: b.prefix.clone(),
                bot: b.bot.clone(),
                push: b.push,
                address: b.address.clone(),
            })
            .collect())
    }

    /// `GET|PUT /user/{id}`: the user record, created when `create` (root only).
    pub async fn user(&self, caller: &Caller, id: &str, create: bool) -> Result<UserRecord, Error> {
        let user = match caller {
            Caller::Root if create => {
                if !is_valid_name(id) {
                    return Err(Error::BadRequest(
                        "User ID must match [a-z0-9=.-]{1,32}".into(),
                    ));
                }
                let (user, created) = self.store.get_or_create_user(id)?;
                if created {
                    self.flush().await?;
                    tracing::info!(user = %id, "created user");
                }
                user
            }
            _ => self.user_record(caller, id)?,
        };
        Ok(UserRecord {
            id: user.id.clone(),
            api_token: user.api_token.expose().to_owned(),
            login_token: user.login_token.expose().to_owned(),
        })
    }

    /// `GET /user/{id}/proxy`: the user's proxy settings; the private key only when
    /// `private` (a request authenticated by the user's own Matrix token).
    pub async fn user_proxy(
        &self,
        caller: &Caller,
        id: &str,
        private: bool,
    ) -> Result<Value, Error> {
        let user = self.user_record(caller, id)?;
        let config = stored_proxy_config(&user)?.ok_or(Error::NotFound("Proxy config not set."))?;
        Ok(user_proxy::shown(&config, private))
    }

    /// `PUT /user/{id}/proxy`: stores the SSH settings of `settings`, with new credentials
    /// when there were none or `regenerate`.
    pub async fn set_user_proxy(
        &self,
        caller: &Caller,
        id: &str,
        settings: Map<String, Value>,
        regenerate: bool,
    ) -> Result<Value, Error> {
        let user = self.user_record(caller, id)?;
        let config = match stored_proxy_config(&user)? {
            Some(config) if !regenerate => config,
            _ => user_proxy::generate(&user.id)?,
        };
        let config = user_proxy::with_settings(config, settings);
        self.store.ensure_space()?;
        if !self
            .store
            .set_proxy_config(&user.id, Some(Secret::new(config.to_string())))?
        {
            return Err(Error::NotFound("User not found."));
        }
        self.flush().await?;
        Ok(user_proxy::shown(&config, false))
    }

    /// The user `id` as `caller` may see it (never created).
    fn user_record(&self, caller: &Caller, id: &str) -> Result<Arc<User>, Error> {
        match caller {
            Caller::User(user) if user.id == id => Ok(self.store.user(id)?.unwrap_or(user.clone())),
            Caller::User(_) => Err(Error::Unauthorized("You can only access your own user")),
            Caller::Root => self
                .store
                .user(id)?
                .ok_or(Error::NotFound("User not found.")),
        }
    }

    /// `DELETE /room/{roomId}`: drops the room's events from now on (root only).
    pub async fn delete_room(&self, caller: &Caller, room_id: &str) -> Result<(), Error> {
        if !matches!(caller, Caller::Root) {
            return Err(Error::Unauthorized("Only the root user can delete rooms"));
        }
        self.store.mark_room_deleted(room_id)?;
        self.flush().await
    }

    /// `GET /admin/backup` (root only): starts writing a backup on a blocking thread and
    /// returns the channel its bytes arrive on, so the answer streams in constant memory.
    pub fn backup(
        &self,
        caller: &Caller,
    ) -> Result<tokio::sync::mpsc::Receiver<std::io::Result<bytes::Bytes>>, Error> {
        if !matches!(caller, Caller::Root) {
            return Err(Error::Unauthorized("Only the root user can make backups"));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let store = self.store.clone();
        self.delivery.tasks.spawn_blocking(move || {
            let writer = ChannelWriter(tx.clone());
            if let Err(e) = store.write_backup(writer, crate::store::now_ms()) {
                if tx.is_closed() {
                    tracing::warn!("backup download abandoned by the client");
                    return;
                }
                tracing::error!(error = %e, "backup failed");
                // The reader sees the error and the download ends incomplete.
                let _ = tx.blocking_send(Err(std::io::Error::other(e.to_string())));
            }
        });
        Ok(rx)
    }

    /// The bridge `target` if the caller may see it. A user asking for someone else's
    /// bridge gets 401 whether or not it exists, so UUIDs cannot be probed.
    fn find(&self, caller: &Caller, target: &BridgeRef) -> Result<Option<Arc<Bridge>>, Error> {
        let bridge = match target {
            BridgeRef::Id(id) => self.store.bridge(*id),
            BridgeRef::Name { owner, prefix } => {
                if let Caller::User(user) = caller {
                    if user.id != *owner {
                        return Err(Error::Unauthorized(
                            "You can only manage your own appservices",
                        ));
                    }
                }
                self.store.bridge_by_name(owner, prefix)
            }
        }?;
        match (caller, bridge) {
            (Caller::User(user), Some(b)) if b.owner != user.id => Err(self.not_found(caller)),
            (_, bridge) => Ok(bridge),
        }
    }

    /// The bridge `target`, or the error the caller should see.
    fn visible(&self, caller: &Caller, target: &BridgeRef) -> Result<Arc<Bridge>, Error> {
        self.find(caller, target)?
            .ok_or_else(|| self.not_found(caller))
    }

    fn not_found(&self, caller: &Caller) -> Error {
        match caller {
            Caller::Root => Error::NotFound("Application service not found."),
            Caller::User(_) => Error::Unauthorized("You can only manage your own appservices"),
        }
    }

    fn registration_of(
        &self,
        bridge: &Bridge,
        password: Option<(String, ConfigPassword)>,
        lifetime: u64,
    ) -> Result<BridgeRegistration, Error> {
        let owner = self
            .store
            .user(&bridge.owner)?
            .ok_or_else(|| Error::internal("bridge without owner", &bridge.owner))?;
        let registration = BridgeRegistration::new(bridge, &owner, &self.namespace, self.exclusive);
        Ok(with_password(registration, password, lifetime))
    }

    async fn flush(&self) -> Result<(), Error> {
        self.store.flush().await.map_err(Error::from)
    }

    /// `GET /public/config/{prefix}/register` with HTTP Basic `owner:password`: trades the
    /// one-time config password for a new one that does not expire, and returns the
    /// download URL that carries it.
    pub async fn register_config(
        &self,
        config: &Config,
        prefix: &str,
        authorization: Option<&str>,
    ) -> Result<String, Error> {
        let bridge = self.config_login(prefix, authorization)?;
        let (plain, stored) = new_config_password(None);
        self.store
            .modify_bridge(bridge.id, |b| b.config_password = Some(stored))?;
        self.flush().await?;
        let base = config.public_base();
        let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
        Ok(format!(
            "{scheme}://{}:{plain}@{rest}/_matrix/asmux/public/config/{}/download",
            bridge.owner, bridge.prefix
        ))
    }

    /// `GET /public/config/{prefix}/download` with HTTP Basic `owner:password`: the
    /// bridge's config, as YAML.
    pub fn download_config(
        &self,
        config: &Config,
        prefix: &str,
        authorization: Option<&str>,
    ) -> Result<String, Error> {
        let bridge = self.config_login(prefix, authorization)?;
        let registration = self.registration_of(&bridge, None, 0)?;
        crate::operator::bridge_config::download(config, &bridge, &registration)
    }

    /// The bridge `owner`/`prefix` whose config password is in the Basic credentials.
    fn config_login(
        &self,
        prefix: &str,
        authorization: Option<&str>,
    ) -> Result<Arc<Bridge>, Error> {
        let invalid = || Error::UnknownToken("Invalid config password");
        let (owner, password) = authorization
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| data_encoding::BASE64.decode(b.trim().as_bytes()).ok())
            .and_then(|raw| String::from_utf8(raw).ok())
            .and_then(|text| {
                let (owner, password) = text.split_once(':')?;
                Some((owner.to_owned(), password.to_owned()))
            })
            .ok_or(Error::MissingToken(
                "Missing or invalid Basic authorization header",
            ))?;
        let bridge = self
            .store
            .bridge_by_name(&owner, prefix)?
            .ok_or(Error::NotFound("Application service not found."))?;
        let stored = bridge.config_password.as_ref().ok_or_else(invalid)?;
        // The password is random bytes in base32, matched case-insensitively; the stored
        // hash is of the bytes, as the original stored it, so imported passwords still work.
        let Ok(bytes) = BASE32_NOPAD.decode(password.to_ascii_uppercase().as_bytes()) else {
            return Err(invalid());
        };
        let presented: [u8; 32] = Sha256::digest(bytes).into();
        let matches: bool =
            subtle::ConstantTimeEq::ct_eq(&presented[..], &stored.sha256[..]).into();
        let live = stored.expires_at.is_none_or(|at| now().as_secs() <= at);
        if matches && live {
            Ok(bridge)
        } else {
            Err(invalid())
        }
    }

    /// Runs store work that reads or removes without bound (a bridge's rooms, a queue) on
    /// a blocking thread, so a large bridge does not stall routing on the async threads.
    async fn off_thread<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Store, &Arc<Delivery>) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let (store, delivery) = (self.store.clone(), self.delivery.clone());
        self.delivery
            .tasks
            .blocking(move || work(&store, &delivery))
            .await
            .unwrap_or(Err(Error::Internal))
    }
}

fn with_password(
    mut registration: BridgeRegistration,
    password: Option<(String, ConfigPassword)>,
    lifetime: u64,
) -> BridgeRegistration {
    if let Some((plain, _)) = password {
        registration.asmux.config_password = Some(plain);
        registration.asmux.config_password_lifetime = Some(lifetime);
    }
    registration
}

/// A config download password valid for `lifetime` seconds (`None`: no expiry): shown
/// once, stored as SHA-256.
fn new_config_password(lifetime: Option<u64>) -> (String, ConfigPassword) {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes);
    let plain = BASE32_NOPAD.encode(&bytes);
    let stored = ConfigPassword {
        sha256: Sha256::digest(bytes).into(),
        expires_at: lifetime.map(|l| now().as_secs() + l),
    };
    (plain, stored)
}

/// `Bearer <token>` from an `Authorization` header, with the spec's auth errors.
pub fn bearer_token(header: Option<&str>) -> Result<&str, Error> {
    let header = header.ok_or(Error::MissingToken("Missing authorization header"))?;
    bearer(header).ok_or(Error::UnknownToken("Invalid authorization header"))
}

fn now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

/// Hands written bytes to an async reader, blocking while it falls behind.
struct ChannelWriter(tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>);

impl std::io::Write for ChannelWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .blocking_send(Ok(bytes::Bytes::copy_from_slice(buf)))
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::BrokenPipe, "backup reader went away")
            })?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
