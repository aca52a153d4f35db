//! Provisioning and managing bridges and their owners (spec 6): the logic behind the
//! management API, also used directly by the CLI when the server is not running.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::config::{is_http_url, Config};
use crate::error::Error;
use crate::matrix::{is_valid_name, Namespace};
use crate::operator::registration::BridgeRegistration;
use crate::secret::{bearer, urlsafe_token, Secret};
use crate::service::bridge_requests::{self, BridgeStatus};
use crate::service::delivery::Delivery;
use crate::service::homeserver::Homeserver;
use crate::service::{config_download, user_proxy};
use crate::store::backup::ChannelWriter;
use crate::store::{now_ms, Bridge, ConfigPassword, Store, User};

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
        let user_id = (self.homeserver)
            .caller(token, "Invalid authorization token")
            .await?;
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
            .then(|| config_download::new_password(Some(lifetime)));

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
            created_at: now_ms(),
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
        Ok((
            config_download::with_password(registration, password, lifetime),
            created,
        ))
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
        let config = user_proxy::stored(&user)?.ok_or(Error::NotFound("Proxy config not set."))?;
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
        let config = match user_proxy::stored(&user)? {
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
            let writer = ChannelWriter::new(tx.clone());
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
        Ok(config_download::with_password(
            registration,
            password,
            lifetime,
        ))
    }

    async fn flush(&self) -> Result<(), Error> {
        self.store.flush().await.map_err(Error::from)
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

/// `Bearer <token>` from an `Authorization` header, with the spec's auth errors.
pub fn bearer_token(header: Option<&str>) -> Result<&str, Error> {
    let header = header.ok_or(Error::MissingToken("Missing authorization header"))?;
    bearer(header).ok_or(Error::UnknownToken("Invalid authorization header"))
}
