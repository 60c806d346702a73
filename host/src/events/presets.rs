//! Built-in providers for custom sources (`POST /v1/sources` with
//! `"preset"`): each fixes how its deliveries are signed, where the event
//! key and the delivery id come from, and whether it answers a handshake.
//! Decisions only, no I/O; tested on the providers' published samples
//! (`tests/fixtures/gitlab`, `tests/fixtures/slack`).

use serde_json::Value;

use super::signature::Scheme;

/// A provider a source can be made for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Preset {
    /// GitLab webhooks: the shared `X-Gitlab-Token`, key `object_kind` and
    /// `object_attributes.action` (`merge_request.open`, `push`), dedup on
    /// `X-Gitlab-Event-UUID`.
    Gitlab,
    /// The Slack Events API: `X-Slack-Signature` (`v0`), key `event.type`
    /// (`app_mention`), dedup on the payload's `event_id`; answers the
    /// `url_verification` challenge.
    Slack,
    /// Any sender of Standard Webhooks (Svix, GitLab 19.1+, ...): key
    /// `type`, dedup on `webhook-id`.
    StandardWebhooks,
}

/// What a preset fixes on its source.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// The signature scheme.
    pub scheme: Scheme,
    /// The header with the signature or token.
    pub signature_header: &'static str,
    /// The JMESPath expression of the event key.
    pub event_key_expr: &'static str,
    /// The header with the delivery id, if it is in one.
    pub delivery_id_header: Option<&'static str>,
}

impl Preset {
    /// Every preset.
    pub const ALL: [Preset; 3] = [Preset::Gitlab, Preset::Slack, Preset::StandardWebhooks];

    /// Its name.
    pub fn as_str(self) -> &'static str {
        match self {
            Preset::Gitlab => "gitlab",
            Preset::Slack => "slack",
            Preset::StandardWebhooks => "standard-webhooks",
        }
    }

    /// Parses a name.
    pub fn parse(s: &str) -> Option<Preset> {
        Preset::ALL.into_iter().find(|p| p.as_str() == s)
    }

    /// The source fields it fixes.
    pub fn settings(self) -> Settings {
        match self {
            Preset::Gitlab => Settings {
                scheme: Scheme::Token,
                signature_header: "X-Gitlab-Token",
                // `merge_request.open`; events without an action (push, tag_push) by kind alone.
                event_key_expr: "object_attributes.action && join('.', [object_kind, object_attributes.action]) || object_kind",
                delivery_id_header: Some("X-Gitlab-Event-UUID"),
            },
            Preset::Slack => Settings {
                scheme: Scheme::SlackV0,
                signature_header: "X-Slack-Signature",
                event_key_expr: "event.type || type",
                delivery_id_header: None,
            },
            Preset::StandardWebhooks => Settings {
                scheme: Scheme::StandardWebhooks,
                signature_header: "webhook-signature",
                event_key_expr: "type",
                delivery_id_header: None,
            },
        }
    }

    /// The answer to a handshake the provider sends instead of an event
    /// (after its signature was checked), if this payload is one: Slack's
    /// `url_verification` gets `{"challenge": ...}` back, and is not stored.
    pub fn handshake(self, payload: &Value) -> Option<Value> {
        match self {
            Preset::Slack if payload["type"] == "url_verification" => {
                let challenge = payload["challenge"].as_str()?;
                Some(serde_json::json!({ "challenge": challenge }))
            }
            _ => None,
        }
    }

    /// The delivery id carried in the payload, for providers that put it
    /// there (Slack's `event_id`, the same on its retries).
    pub fn payload_delivery_id(self, payload: &Value) -> Option<String> {
        match self {
            Preset::Slack => payload["event_id"].as_str().map(str::to_owned),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(path: &str) -> Value {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures").join(path);
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))).unwrap()
    }

    fn key(preset: Preset, payload: &Value) -> Option<String> {
        super::super::keys::custom_key(preset.settings().event_key_expr, payload).unwrap()
    }

    #[test]
    fn gitlab_keys_are_kind_and_action() {
        assert_eq!(key(Preset::Gitlab, &fixture("gitlab/issue.json")).as_deref(), Some("issue.open"));
        assert_eq!(key(Preset::Gitlab, &fixture("gitlab/push.json")).as_deref(), Some("push"));
        assert_eq!(Preset::Gitlab.handshake(&fixture("gitlab/push.json")), None);
    }

    #[test]
    fn slack_answers_its_challenge_and_keys_on_the_inner_event() {
        let verify = fixture("slack/url_verification.json");
        assert_eq!(
            Preset::Slack.handshake(&verify),
            Some(serde_json::json!({"challenge": "3eZbrw1aBm2rZgRNFdxV2595E9CY3gmdALWMmHkvFXO7tYXAYM8P"}))
        );
        let mention = fixture("slack/app_mention.json");
        assert_eq!(Preset::Slack.handshake(&mention), None);
        assert_eq!(key(Preset::Slack, &mention).as_deref(), Some("app_mention"));
        assert_eq!(Preset::Slack.payload_delivery_id(&mention).as_deref(), Some("Ev0MDYHUEL"));
    }

    #[test]
    fn names_round_trip() {
        for p in Preset::ALL {
            assert_eq!(Preset::parse(p.as_str()), Some(p));
        }
        assert_eq!(Preset::parse("github"), None);
    }
}
