//! Namespace isolation (spec 5): a bridge token may only name users and aliases inside
//! its own bridge's namespace, and act as its owner only to double puppet.

use super::endpoint;
use super::target::{single, Target};
use crate::error::Error;
use crate::matrix::Namespace;
use crate::store::Bridge;

/// Whom a bridge may act as.
#[derive(Debug, PartialEq, Eq)]
pub enum Masquerade {
    /// A user in its own namespace (its bot, its ghosts).
    Namespace,
    /// Its owner: double puppeting.
    Owner,
}

/// Whom a bridge's request acts as, read from its query (`user_id` and the device
/// parameters, each at most once): the bridge's bot when it names nobody. A bridge
/// acting as its owner may neither name a device of the owner nor reach an endpoint
/// that mints credentials or manages the account: mautrix bridges' double puppeting
/// sends only `user_id`, and anything more would hand the bridge the owner's account.
pub fn acting_as(
    ns: &Namespace,
    bridge: &Bridge,
    params: &[(String, String)],
    target: &Target,
) -> Result<(Masquerade, String), Error> {
    single(params, "access_token")?;
    let device = device_param(params)?;
    let (masquerade, user_id) = match single(params, "user_id")? {
        Some(user_id) => (masquerade(ns, bridge, user_id)?, user_id.to_owned()),
        None => (Masquerade::Namespace, bridge.bot_id(ns)),
    };
    if masquerade == Masquerade::Owner {
        if device.is_some() {
            return Err(Error::Forbidden(
                "A bridge acting as its owner cannot act as one of the owner's devices".into(),
            ));
        }
        if endpoint::manages_account(target) {
            return Err(Error::Forbidden(
                "A bridge acting as its owner cannot log in, register, or manage the owner's \
                 account, devices or keys"
                    .into(),
            ));
        }
    }
    Ok((masquerade, user_id))
}

/// The device a request masquerades as: `device_id` or MSC3202's name for it (mautrix-go
/// sends both, equal); two different ones are refused.
fn device_param(params: &[(String, String)]) -> Result<Option<&str>, Error> {
    let stable = single(params, "device_id")?;
    let unstable = single(params, "org.matrix.msc3202.device_id")?;
    match (stable, unstable) {
        (Some(a), Some(b)) if a != b => Err(Error::InvalidParam(
            "device_id and org.matrix.msc3202.device_id name different devices".into(),
        )),
        (a, b) => Ok(a.or(b)),
    }
}

/// Checks a `user_id` the bridge wants to act as.
pub fn masquerade(ns: &Namespace, bridge: &Bridge, user_id: &str) -> Result<Masquerade, Error> {
    let on_server = user_id
        .rsplit_once(':')
        .is_some_and(|(_, server)| server == ns.server);
    if !on_server {
        return Err(Error::Forbidden(
            "Application service cannot masquerade as user on external homeserver.".into(),
        ));
    }
    if user_id == ns.user_id(&bridge.owner) {
        return Ok(Masquerade::Owner);
    }
    if !ns.in_bridge(user_id, &bridge.owner, &bridge.prefix) {
        return Err(Error::Forbidden(
            "Application service cannot masquerade as this local user.".into(),
        ));
    }
    Ok(Masquerade::Namespace)
}

/// Checks a localpart or full user ID the bridge registers or logs in.
pub fn own_user(
    ns: &Namespace,
    bridge: &Bridge,
    user: &str,
    errcode_exclusive: bool,
) -> Result<(), Error> {
    let user_id = if user.starts_with('@') {
        user.to_owned()
    } else {
        ns.user_id(user)
    };
    if ns.in_bridge(&user_id, &bridge.owner, &bridge.prefix) {
        return Ok(());
    }
    let message = "User ID is outside this bridge's namespace";
    Err(if errcode_exclusive {
        Error::Custom {
            status: http::StatusCode::FORBIDDEN,
            errcode: "M_EXCLUSIVE",
            message: message.into(),
        }
    } else {
        Error::Forbidden(message.into())
    })
}

/// Checks a room alias (full `#alias:server`) the bridge creates or deletes.
pub fn own_alias(ns: &Namespace, bridge: &Bridge, alias: &str) -> Result<(), Error> {
    match ns.parse('#', alias) {
        Some(a) if a.owner == bridge.owner && a.prefix == bridge.prefix => Ok(()),
        _ => Err(Error::Forbidden(
            "Alias is outside this bridge's namespace".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bridge() -> Bridge {
        crate::store::bridges::test_bridge("alice", "whatsapp")
    }

    #[test]
    fn masquerading() {
        let ns = Namespace::new("_", "example.test");
        let b = bridge();
        for own in [
            "@_alice_whatsapp_bot:example.test",
            "@_alice_whatsapp_123:example.test",
        ] {
            assert_eq!(masquerade(&ns, &b, own).unwrap(), Masquerade::Namespace);
        }
        assert_eq!(
            masquerade(&ns, &b, "@alice:example.test").unwrap(),
            Masquerade::Owner
        );
        for other in [
            "@bob:example.test",
            "@_bob_whatsapp_bot:example.test",
            "@_alice_whatsapp2_123:example.test",
            "@_bob_whatsapp_123:example.test",
            "@_alice_whatsapp:example.test",
        ] {
            let err = masquerade(&ns, &b, other).unwrap_err();
            assert_eq!(
                err.to_string(),
                "Application service cannot masquerade as this local user.",
                "{other}"
            );
        }
        let err = masquerade(&ns, &b, "@_alice_whatsapp_1:other.test").unwrap_err();
        assert_eq!(
            err.to_string(),
            "Application service cannot masquerade as user on external homeserver."
        );
    }

    #[test]
    fn users_and_aliases() {
        let ns = Namespace::new("_", "example.test");
        let b = bridge();
        assert!(own_user(&ns, &b, "_alice_whatsapp_1", true).is_ok());
        assert!(own_user(&ns, &b, "@_alice_whatsapp_1:example.test", true).is_ok());
        assert_eq!(
            own_user(&ns, &b, "_alice_signal_1", true)
                .unwrap_err()
                .errcode(),
            "M_EXCLUSIVE"
        );
        assert_eq!(
            own_user(&ns, &b, "alice", false).unwrap_err().errcode(),
            "M_FORBIDDEN"
        );
        assert!(own_alias(&ns, &b, "#_alice_whatsapp_group:example.test").is_ok());
        assert!(own_alias(&ns, &b, "#_alice_whatsapp2_group:example.test").is_err());
        assert!(own_alias(&ns, &b, "#_alice_whatsapp_group:other.test").is_err());
        assert!(own_alias(&ns, &b, "#general:example.test").is_err());
    }
}
