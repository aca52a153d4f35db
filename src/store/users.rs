//! Users: the local Matrix users who own bridges, with their management API token and
//! the login token their bridges derive login passwords from.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sled::transaction::ConflictableTransactionError;
use sled::Transactional;

use super::{decode, encode, tx_result, Store, StoreError};
use crate::secret::{token_digest, urlsafe_token, Secret};

/// A bridge owner.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The Matrix localpart.
    pub id: String,
    /// Bearer token for the management API, limited to this user's bridges.
    pub api_token: Secret,
    /// Key of the HMAC that makes this user's (and their bridges') login passwords.
    pub login_token: Secret,
    /// The proxy settings of `/_matrix/asmux/user/{id}/proxy`, as JSON text: they hold a
    /// private key and its passphrase.
    pub proxy_config: Option<Secret>,
}

impl Store {
    /// The user with localpart `id`.
    pub fn user(&self, id: &str) -> Result<Option<Arc<User>>, StoreError> {
        self.users.get(&id.to_owned(), &self.lock, || {
            self.userid_user
                .get(id)?
                .map(|v| decode("userid_user", &v))
                .transpose()
        })
    }

    /// The user whose api_token is `token`.
    pub fn user_by_api_token(&self, token: &str) -> Result<Option<Arc<User>>, StoreError> {
        let Some(id) = self.apitoken_userid.get(token_digest(token))? else {
            return Ok(None);
        };
        let user = self.user(&String::from_utf8_lossy(&id))?;
        Ok(user.filter(|u| u.api_token.matches(token)))
    }

    /// The user `id`, created with fresh tokens when missing. The bool tells whether it
    /// was created. `id` must already be validated.
    pub fn get_or_create_user(&self, id: &str) -> Result<(Arc<User>, bool), StoreError> {
        if let Some(user) = self.user(id)? {
            return Ok((user, false));
        }
        let new = User {
            id: id.to_owned(),
            api_token: urlsafe_token(48),
            login_token: urlsafe_token(48),
            proxy_config: None,
        };
        let created = self.insert_user(&new)?;
        let user = self
            .user(id)?
            .ok_or(StoreError::Sled(sled::Error::ReportableBug(
                "user vanished right after creation".into(),
            )))?;
        Ok((user, created))
    }

    /// Stores `user` unless its localpart is taken; returns whether it was stored.
    pub fn insert_user(&self, user: &User) -> Result<bool, StoreError> {
        let id = user.id.as_str();
        let _guard = self.write_lock();
        let created = tx_result::<_, StoreError>(
            (&self.userid_user, &self.apitoken_userid).transaction(|(users, tokens)| {
                if users.get(id)?.is_some() {
                    return Ok(false);
                }
                users.insert(id, encode(user))?;
                tokens.insert(&token_digest(user.api_token.expose()), id)?;
                Ok::<_, ConflictableTransactionError<StoreError>>(true)
            }),
        )?;
        self.users.invalidate(&user.id);
        Ok(created)
    }

    /// Replaces the proxy settings of user `id`; false when there is no such user.
    pub fn set_proxy_config(&self, id: &str, config: Option<Secret>) -> Result<bool, StoreError> {
        let _guard = self.write_lock();
        let Some(bytes) = self.userid_user.get(id)? else {
            return Ok(false);
        };
        let mut user: User = decode("userid_user", &bytes)?;
        user.proxy_config = config;
        self.userid_user.insert(id, encode(&user))?;
        self.users.invalidate(&id.to_owned());
        Ok(true)
    }

    /// Creates user `id`; convenience for callers that do not care whether it existed.
    pub fn create_user(&self, id: &str) -> Result<Arc<User>, StoreError> {
        Ok(self.get_or_create_user(id)?.0)
    }

    /// Every user, in localpart order.
    pub fn users(&self) -> Result<Vec<User>, StoreError> {
        self.userid_user
            .iter()
            .values()
            .map(|v| decode("userid_user", &v?))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_is_idempotent_and_indexed_by_token() {
        let tmp = tempfile::tempdir().unwrap();
        let store = Store::open(tmp.path()).unwrap();
        assert!(store.user("alice").unwrap().is_none());
        let (alice, created) = store.get_or_create_user("alice").unwrap();
        assert!(created);
        let (again, created) = store.get_or_create_user("alice").unwrap();
        assert!(!created);
        assert_eq!(alice, again);
        assert_eq!(
            store
                .user_by_api_token(alice.api_token.expose())
                .unwrap()
                .unwrap()
                .id,
            "alice"
        );
        assert!(store.user_by_api_token("nope").unwrap().is_none());
        assert_ne!(alice.api_token, alice.login_token);
    }
}
