//! Just enough of an event to route it: the rest stays raw JSON and is passed on
//! byte for byte.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;

/// Event types whose empty content means the event was redacted, and which count as
/// messages for the owner filter (together with redactions).
const MESSAGE_TYPES: &[&str] = &[
    "m.room.message",
    "m.room.encrypted",
    "m.sticker",
    "m.reaction",
];

/// The routing-relevant fields of a PDU, ephemeral or to-device event.
#[derive(Debug, Default, Deserialize)]
pub struct EventMeta<'a> {
    #[serde(borrow, default, rename = "type")]
    pub kind: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub room_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub sender: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub state_key: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub event_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    pub to_user_id: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    origin_server_ts: Option<&'a RawValue>,
    #[serde(borrow, default)]
    content: Option<&'a RawValue>,
}

impl<'a> EventMeta<'a> {
    /// Reads the fields of `raw`; `None` when it is not an object of the expected shape.
    pub fn parse(raw: &'a RawValue) -> Option<EventMeta<'a>> {
        serde_json::from_str(raw.get()).ok()
    }

    pub fn kind(&self) -> &str {
        self.kind.as_deref().unwrap_or("")
    }

    /// `origin_server_ts` in milliseconds, if it is a number.
    pub fn origin_server_ts(&self) -> Option<i64> {
        let n: serde_json::Number = serde_json::from_str(self.origin_server_ts?.get()).ok()?;
        n.as_i64().or_else(|| n.as_f64().map(|f| f as i64))
    }

    /// Whether this is a message-like event whose content is empty: a redacted event,
    /// which bridges cannot do anything with.
    pub fn is_redacted_message(&self) -> bool {
        MESSAGE_TYPES.contains(&self.kind()) && self.content_is_empty()
    }

    /// Whether this membership event makes its user joined (`content.membership` is
    /// `join`); any other membership, or none readable, does not.
    pub fn is_join(&self) -> bool {
        #[derive(Deserialize)]
        struct Member<'a> {
            #[serde(borrow)]
            membership: Cow<'a, str>,
        }
        self.content
            .and_then(|raw| serde_json::from_str::<Member<'_>>(raw.get()).ok())
            .is_some_and(|m| m.membership == "join")
    }

    /// Whether the type is one of the message checkpoint types.
    pub fn is_message(&self) -> bool {
        MESSAGE_TYPES.contains(&self.kind()) || self.kind() == "m.room.redaction"
    }

    fn content_is_empty(&self) -> bool {
        match self.content {
            None => true,
            Some(raw) => serde_json::from_str::<serde_json::Map<String, Value>>(raw.get())
                .map(|m| m.is_empty())
                .unwrap_or(false),
        }
    }

    /// Whether a bridge sent this on the user's behalf (double puppeting): those must not
    /// be bridged back.
    pub fn is_double_puppeted(&self) -> bool {
        let Some(content) = self.content else {
            return false;
        };
        let Ok(markers) = serde_json::from_str::<PuppetMarkers>(content.get()) else {
            return false;
        };
        markers
            .source
            .as_deref()
            .is_some_and(|s| s == "slack" || s == "discord")
            || markers.flags().any(|v| v.is_some_and(truthy))
    }
}

/// Content fields that bridges set on events they send as a double puppet.
#[derive(Debug, Default, Deserialize)]
struct PuppetMarkers {
    #[serde(default, rename = "fi.mau.double_puppet_source")]
    double_puppet_source: Option<Value>,
    #[serde(default, rename = "com.beeper.linkedin.puppet")]
    linkedin: Option<Value>,
    #[serde(default, rename = "net.maunium.amp.puppet")]
    amp: Option<Value>,
    #[serde(default, rename = "net.maunium.facebook.puppet")]
    facebook: Option<Value>,
    #[serde(default, rename = "net.maunium.googlechat.puppet")]
    googlechat: Option<Value>,
    #[serde(default, rename = "net.maunium.hangouts.puppet")]
    hangouts: Option<Value>,
    #[serde(default, rename = "net.maunium.imessage.puppet")]
    imessage: Option<Value>,
    #[serde(default, rename = "net.maunium.instagram.puppet")]
    instagram: Option<Value>,
    #[serde(default, rename = "net.maunium.signal.puppet")]
    signal: Option<Value>,
    #[serde(default, rename = "net.maunium.telegram.puppet")]
    telegram: Option<Value>,
    #[serde(default, rename = "net.maunium.twitter.puppet")]
    twitter: Option<Value>,
    #[serde(default, rename = "net.maunium.whatsapp.puppet")]
    whatsapp: Option<Value>,
    #[serde(default)]
    source: Option<String>,
}

impl PuppetMarkers {
    fn flags(&self) -> impl Iterator<Item = Option<&Value>> {
        [
            &self.double_puppet_source,
            &self.linkedin,
            &self.amp,
            &self.facebook,
            &self.googlechat,
            &self.hangouts,
            &self.imessage,
            &self.instagram,
            &self.signal,
            &self.telegram,
            &self.twitter,
            &self.whatsapp,
        ]
        .into_iter()
        .map(Option::as_ref)
    }
}

/// JSON truthiness as the original (Python) judged it.
fn truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(json: &str) -> EventMeta<'_> {
        let raw: &RawValue = serde_json::from_str(json).unwrap();
        EventMeta::parse(raw).unwrap()
    }

    #[test]
    fn redacted_messages() {
        let owned = r#"{"type":"m.room.message","content":{}}"#.to_owned();
        assert!(meta(&owned).is_redacted_message());
        assert!(meta(r#"{"type":"m.reaction"}"#).is_redacted_message());
        assert!(!meta(r#"{"type":"m.room.message","content":{"body":"x"}}"#).is_redacted_message());
        assert!(!meta(r#"{"type":"m.room.member","content":{}}"#).is_redacted_message());
    }

    #[test]
    fn memberships() {
        assert!(meta(r#"{"content":{"membership":"join","x":1}}"#).is_join());
        for other in ["invite", "leave", "ban", "knock"] {
            let json = format!(r#"{{"content":{{"membership":"{other}"}}}}"#);
            assert!(!meta(&json).is_join(), "{other}");
        }
        assert!(!meta(r#"{"content":{"membership":5}}"#).is_join());
        assert!(!meta(r#"{"content":{}}"#).is_join());
        assert!(!meta("{}").is_join());
    }

    #[test]
    fn double_puppet_markers() {
        assert!(
            meta(r#"{"content":{"fi.mau.double_puppet_source":"mautrix-whatsapp"}}"#)
                .is_double_puppeted()
        );
        assert!(meta(r#"{"content":{"net.maunium.telegram.puppet":true}}"#).is_double_puppeted());
        assert!(meta(r#"{"content":{"source":"discord"}}"#).is_double_puppeted());
        assert!(!meta(r#"{"content":{"fi.mau.double_puppet_source":""}}"#).is_double_puppeted());
        assert!(!meta(r#"{"content":{"net.maunium.whatsapp.puppet":false}}"#).is_double_puppeted());
        assert!(!meta(r#"{"content":{"source":"matrix"}}"#).is_double_puppeted());
        assert!(!meta(r#"{"content":{"body":"hi"}}"#).is_double_puppeted());
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            meta(r#"{"origin_server_ts":1795598833017}"#).origin_server_ts(),
            Some(1795598833017)
        );
        assert_eq!(
            meta(r#"{"origin_server_ts":"soon"}"#).origin_server_ts(),
            None
        );
        assert_eq!(meta("{}").origin_server_ts(), None);
    }
}
