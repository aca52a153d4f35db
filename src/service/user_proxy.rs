//! A user's proxy settings (`/_matrix/asmux/user/{id}/proxy`), kept for bridges that
//! tunnel their remote network's traffic: SOCKS credentials and an SSH key pair whose
//! private half is encrypted with a random passphrase. asmux stores them and hands them
//! out; it runs no proxy itself.

use serde_json::{json, Map, Value};
use ssh_key::rand_core::OsRng;
use ssh_key::{Algorithm, LineEnding, PrivateKey};

use crate::error::Error;
use crate::secret::urlsafe_token;
use crate::store::User;

/// The proxy settings stored for `user`, as JSON.
pub fn stored(user: &User) -> Result<Option<Value>, Error> {
    user.proxy_config
        .as_ref()
        .map(|text| {
            serde_json::from_str(text.expose())
                .map_err(|e| Error::internal("stored proxy settings are not JSON", e))
        })
        .transpose()
}

/// The fields of `ssh` only a Matrix-authenticated request of the user sees.
const PRIVATE_FIELDS: [&str; 2] = ["privateKey", "passphrase"];

/// New credentials for user `id`: SOCKS login and a fresh Ed25519 key in OpenSSH form.
pub fn generate(id: &str) -> Result<Value, Error> {
    let failed = |e: ssh_key::Error| Error::internal("cannot make an SSH key", e);
    let key = PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(failed)?;
    let passphrase = urlsafe_token(48);
    let private = key
        .encrypt(&mut OsRng, passphrase.expose())
        .and_then(|encrypted| encrypted.to_openssh(LineEnding::LF))
        .map_err(failed)?;
    let public = key.public_key().to_openssh().map_err(failed)?;
    Ok(json!({
        "socks": {"username": format!("nova-{id}-proxy"), "password": urlsafe_token(48).expose()},
        "ssh": {
            "publicKey": public,
            "privateKey": private.as_str(),
            "passphrase": passphrase.expose(),
        },
    }))
}

/// `config` with its SSH settings replaced by `settings`, keeping the key pair.
pub fn with_settings(mut config: Value, settings: Map<String, Value>) -> Value {
    let mut ssh = settings;
    for field in ["publicKey", "privateKey", "passphrase"] {
        let kept = config["ssh"].get(field).cloned().unwrap_or(Value::Null);
        ssh.insert(field.to_owned(), kept);
    }
    config["ssh"] = Value::Object(ssh);
    config
}

/// What a caller is shown: without the private key and its passphrase unless `private`.
pub fn shown(config: &Value, private: bool) -> Value {
    let mut shown = json!({"ssh": config["ssh"], "socks": config["socks"]});
    if !private {
        if let Some(ssh) = shown["ssh"].as_object_mut() {
            for field in PRIVATE_FIELDS {
                ssh.remove(field);
            }
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_encrypted_openssh_ed25519() {
        let config = generate("alice").unwrap();
        assert_eq!(config["socks"]["username"], "nova-alice-proxy");
        let private = config["ssh"]["privateKey"].as_str().unwrap();
        let key = PrivateKey::from_openssh(private).unwrap();
        assert!(key.is_encrypted());
        let passphrase = config["ssh"]["passphrase"].as_str().unwrap();
        let decrypted = key.decrypt(passphrase).unwrap();
        assert_eq!(
            decrypted.public_key().to_openssh().unwrap(),
            config["ssh"]["publicKey"].as_str().unwrap()
        );
        assert!(key.decrypt("wrong").is_err());
    }

    #[test]
    fn settings_replace_everything_but_the_key_pair() {
        let config = generate("alice").unwrap();
        let settings = json!({"host": "h", "port": 22, "publicKey": "forged"});
        let updated = with_settings(config.clone(), settings.as_object().unwrap().clone());
        assert_eq!(updated["ssh"]["host"], "h");
        assert_eq!(updated["ssh"]["publicKey"], config["ssh"]["publicKey"]);
        assert_eq!(updated["socks"], config["socks"]);
        let public = shown(&updated, false);
        assert!(public["ssh"].get("privateKey").is_none());
        assert!(public["ssh"].get("passphrase").is_none());
        assert_eq!(shown(&updated, true)["ssh"], updated["ssh"]);
    }
}
