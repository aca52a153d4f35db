//! Bridge namespaces (spec section 1): `@{gp}{owner}_{prefix}_{rest}:{server}`.

/// Whether `s` is a valid owner or prefix: `[a-z0-9=.-]{1,32}`. No `_`, so a user ID
/// inside the global namespace splits back into owner and prefix without ambiguity.
pub fn is_valid_name(s: &str) -> bool {
    (1..=32).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"=.-".contains(&b))
}

/// Escapes regex metacharacters the way Python's `re.escape` does, so registrations read
/// the same as the original's and parse in Synapse (Python) and in bridges (Go, Python).
pub fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 4);
    for c in s.chars() {
        if "()[]{}?*+-|^$\\.&~# \t\n\r\x0b\x0c".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The global namespace asmux owns on one homeserver.
#[derive(Debug, Clone)]
pub struct Namespace {
    /// `appservice.namespace.prefix` (`_` by default).
    pub global_prefix: String,
    /// `homeserver.domain`.
    pub server: String,
}

/// A user ID inside the global namespace, split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeUser<'a> {
    pub owner: &'a str,
    pub prefix: &'a str,
    pub rest: &'a str,
}

impl Namespace {
    pub fn new(global_prefix: impl Into<String>, server: impl Into<String>) -> Self {
        Namespace {
            global_prefix: global_prefix.into(),
            server: server.into(),
        }
    }

    /// The regex of asmux's whole namespace for `sigil` (`@` users, `#` aliases).
    pub fn global_regex(&self, sigil: char) -> String {
        format!(
            "{sigil}{}.+:{}",
            regex_escape(&self.global_prefix),
            regex_escape(&self.server)
        )
    }

    /// The regex of every ID with `sigil` on the server (the double-puppet registration's).
    pub fn server_regex(&self, sigil: char) -> String {
        format!("{sigil}.*:{}", regex_escape(&self.server))
    }

    /// The regex of one bridge's namespace for `sigil`.
    pub fn bridge_regex(&self, sigil: char, owner: &str, prefix: &str) -> String {
        format!(
            "{sigil}{}_.+:{}",
            regex_escape(&self.bridge_localpart_prefix(owner, prefix)),
            regex_escape(&self.server)
        )
    }

    /// `{gp}{owner}_{prefix}`: every localpart of the bridge starts with this and `_`.
    pub fn bridge_localpart_prefix(&self, owner: &str, prefix: &str) -> String {
        format!("{}{owner}_{prefix}", self.global_prefix)
    }

    /// The bridge bot's localpart, `{gp}{owner}_{prefix}_{bot}`.
    pub fn bot_localpart(&self, owner: &str, prefix: &str, bot: &str) -> String {
        format!("{}_{bot}", self.bridge_localpart_prefix(owner, prefix))
    }

    /// `@{localpart}:{server}`.
    pub fn user_id(&self, localpart: &str) -> String {
        format!("@{localpart}:{}", self.server)
    }

    /// Splits a user ID (`@`) or alias (`#`) back into owner, prefix and the rest. Anything
    /// not of the form `{sigil}{gp}{owner}_{prefix}_{rest}:{server}` belongs to no bridge,
    /// also a `rest` with a `:`: homeservers split an ID at its first `:`, so
    /// `@_a_b_x:evil:{server}` is no user of this server.
    pub fn parse<'a>(&self, sigil: char, id: &'a str) -> Option<BridgeUser<'a>> {
        let local = id
            .strip_prefix(sigil)?
            .strip_prefix(self.global_prefix.as_str())?
            .strip_suffix(self.server.as_str())?
            .strip_suffix(':')
            .filter(|local| !local.contains(':'))?;
        let mut parts = local.splitn(3, '_');
        let (owner, prefix, rest) = (parts.next()?, parts.next()?, parts.next()?);
        (is_valid_name(owner) && is_valid_name(prefix) && !rest.is_empty()).then_some(BridgeUser {
            owner,
            prefix,
            rest,
        })
    }

    /// The localpart of `user_id` when it names a user of this server.
    pub fn local_user<'a>(&self, user_id: &'a str) -> Option<&'a str> {
        user_id
            .strip_prefix('@')?
            .strip_suffix(self.server.as_str())?
            .strip_suffix(':')
            .filter(|local| !local.is_empty() && !local.contains(':'))
    }

    /// Whether `user_id` lies inside the namespace of bridge `owner`/`prefix`.
    pub fn in_bridge(&self, user_id: &str, owner: &str, prefix: &str) -> bool {
        self.parse('@', user_id)
            .is_some_and(|u| u.owner == owner && u.prefix == prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns() -> Namespace {
        Namespace::new("_", "example.test")
    }

    #[test]
    fn names() {
        assert!(is_valid_name("alice"));
        assert!(is_valid_name("a=b.c-9"));
        assert!(is_valid_name(&"a".repeat(32)));
        assert!(!is_valid_name(&"a".repeat(33)));
        assert!(!is_valid_name(""));
        assert!(!is_valid_name("Alice_X"));
        assert!(!is_valid_name("bad_prefix"));
        assert!(!is_valid_name("ünï"));
    }

    #[test]
    fn regexes_match_the_original() {
        // From the reference registration in the fixtures.
        assert_eq!(ns().global_regex('@'), r"@_.+:example\.test");
        assert_eq!(
            ns().bridge_regex('@', "alice", "whatsapp"),
            r"@_alice_whatsapp_.+:example\.test"
        );
        assert_eq!(
            ns().bridge_regex('#', "a-b", "c.d"),
            r"#_a\-b_c\.d_.+:example\.test"
        );
        assert_eq!(
            ns().bot_localpart("alice", "whatsapp", "bot"),
            "_alice_whatsapp_bot"
        );
    }

    #[test]
    fn parses_bridge_users() {
        let n = ns();
        assert_eq!(
            n.parse('@', "@_alice_whatsapp_491701234567:example.test"),
            Some(BridgeUser {
                owner: "alice",
                prefix: "whatsapp",
                rest: "491701234567"
            })
        );
        // The rest may itself contain underscores.
        assert_eq!(
            n.parse('@', "@_alice_whatsapp_a_b:example.test")
                .map(|u| u.rest),
            Some("a_b")
        );
        assert!(n.in_bridge("@_alice_whatsapp_bot:example.test", "alice", "whatsapp"));
        assert!(!n.in_bridge("@_alice_whatsapp2_bot:example.test", "alice", "whatsapp"));
        assert!(!n.in_bridge("@_alice_whatsapp_bot:other.test", "alice", "whatsapp"));
        assert!(!n.in_bridge("@alice:example.test", "alice", "whatsapp"));
        assert!(!n.in_bridge("@_alice_whatsapp_:example.test", "alice", "whatsapp"));
        assert!(!n.in_bridge("@_alice_whatsapp:example.test", "alice", "whatsapp"));
        assert!(n.parse('@', "@_Alice_whatsapp_x:example.test").is_none());
        assert!(n.parse('#', "@_alice_whatsapp_x:example.test").is_none());
        assert!(n
            .parse('@', "@_alice_whatsapp_x:evil.example.test")
            .is_none());
        assert!(n
            .parse('@', "@_alice_whatsapp_x:evil:example.test")
            .is_none());
        assert_eq!(n.local_user("@alice:example.test"), Some("alice"));
        assert_eq!(n.local_user("@alice:evil:example.test"), None);
        assert_eq!(n.local_user("@alice:other.test"), None);
        let with_port = Namespace::new("_", "example.test:8448");
        assert!(with_port.in_bridge("@_alice_whatsapp_x:example.test:8448", "alice", "whatsapp"));
    }
}
