//! Config downloads (spec 9): a bridge provisioned with `generate_config` gets a one-time
//! password; with HTTP Basic `owner:password` it trades it for a lasting one and
//! downloads its config. Passwords are 32 random bytes shown as unpadded base32 and
//! stored as the SHA-256 of the bytes, as the original stored them, so passwords it handed
//! out keep working after an import.

use std::sync::Arc;

use data_encoding::BASE32_NOPAD;
use headers::authorization::Basic;
use headers::{Authorization, Header};
use sha2::{Digest, Sha256};

use crate::config::Config;
use crate::error::Error;
use crate::operator::registration::BridgeRegistration;
use crate::store::{now_ms, Bridge, ConfigPassword, Store};

/// The config downloads of every bridge.
pub struct ConfigDownload {
    config: Arc<Config>,
    store: Arc<Store>,
}

impl ConfigDownload {
    pub fn new(config: Arc<Config>, store: Arc<Store>) -> ConfigDownload {
        ConfigDownload { config, store }
    }

    /// `GET /public/config/{prefix}/register` with HTTP Basic `owner:password`: trades the
    /// one-time config password for a new one that does not expire, and returns the
    /// download URL that carries it.
    pub async fn register(
        &self,
        prefix: &str,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<String, Error> {
        let bridge = self.login(prefix, authorization)?;
        let (plain, stored) = new_password(None);
        self.store
            .modify_bridge(bridge.id, |b| b.config_password = Some(stored))?;
        self.store.flush().await?;
        let base = self.config.public_base();
        let (scheme, rest) = base.split_once("://").unwrap_or(("https", base));
        Ok(format!(
            "{scheme}://{}:{plain}@{rest}/_matrix/asmux/public/config/{}/download",
            bridge.owner, bridge.prefix
        ))
    }

    /// `GET /public/config/{prefix}/download` with HTTP Basic `owner:password`: the
    /// bridge's config, as YAML.
    pub fn download(
        &self,
        prefix: &str,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<String, Error> {
        let bridge = self.login(prefix, authorization)?;
        let owner = self
            .store
            .user(&bridge.owner)?
            .ok_or_else(|| Error::internal("bridge without owner", &bridge.owner))?;
        let ns = self.config.namespace();
        let exclusive = self.config.appservice.namespace.exclusive;
        let registration = BridgeRegistration::new(&bridge, &owner, &ns, exclusive);
        crate::operator::bridge_config::download(&self.config, &bridge, &registration)
    }

    /// The bridge `owner`/`prefix` whose config password is in the Basic credentials.
    fn login(
        &self,
        prefix: &str,
        authorization: Option<&http::HeaderValue>,
    ) -> Result<Arc<Bridge>, Error> {
        let invalid = || Error::UnknownToken("Invalid config password");
        let credentials = authorization
            .and_then(|value| Authorization::<Basic>::decode(&mut std::iter::once(value)).ok())
            .ok_or(Error::MissingToken(
                "Missing or invalid Basic authorization header",
            ))?;
        let bridge = self
            .store
            .bridge_by_name(credentials.username(), prefix)?
            .ok_or(Error::NotFound("Application service not found."))?;
        let stored = bridge.config_password.as_ref().ok_or_else(invalid)?;
        // Random bytes in base32, matched case-insensitively.
        let password = credentials.password().to_ascii_uppercase();
        let Ok(bytes) = BASE32_NOPAD.decode(password.as_bytes()) else {
            return Err(invalid());
        };
        let presented: [u8; 32] = Sha256::digest(bytes).into();
        let matches: bool =
            subtle::ConstantTimeEq::ct_eq(&presented[..], &stored.sha256[..]).into();
        let live = stored.expires_at.is_none_or(|at| now_ms() / 1000 <= at);
        if matches && live {
            Ok(bridge)
        } else {
            Err(invalid())
        }
    }
}

/// A config download password valid for `lifetime` seconds (`None`: no expiry): shown
/// once, stored as SHA-256.
pub fn new_password(lifetime: Option<u64>) -> (String, ConfigPassword) {
    let mut bytes = [0u8; 32];
    rand::Rng::fill(&mut rand::rng(), &mut bytes);
    let plain = BASE32_NOPAD.encode(&bytes);
    let stored = ConfigPassword {
        sha256: Sha256::digest(bytes).into(),
        expires_at: lifetime.map(|l| now_ms() / 1000 + l),
    };
    (plain, stored)
}

/// `registration` showing the new config password `password`, if one was made.
pub fn with_password(
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
