//! Notifications: a source's events sent to a generic webhook or a Slack incoming webhook.
//!
//! | type      | body                                                        | proof                                         |
//! |-----------|-------------------------------------------------------------|-----------------------------------------------|
//! | `webhook` | the [`Notification`] as JSON, with `time` and `agent`        | `X-Signature-256: sha256=` + hex HMAC-SHA256 of the body (with `secretFile`) |
//! | `slack`   | `{"text": "..."}`, one line, `&`, `<`, `>` escaped           | none: the URL is the secret                   |
//!
//! The URL is read from its file at each send and is never shown past `scheme://host`.

use std::time::SystemTime;

use http::header::{HeaderName, CONTENT_TYPE, USER_AGENT};
use http::Method;
use serde::Serialize;
use serde_json::json;

pub use crate::config::{NotifyConfig, NotifyEvent, NotifyType};

use super::http::{user_agent, HttpError, Request};
use crate::status::{rfc3339, webhook};

/// The most characters of a Slack message (Slack accepts more; a line stays readable).
pub const MAX_SLACK_TEXT: usize = 1000;

/// What happened to a source: the payload of a webhook, the line of a Slack message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Notification {
    pub event: NotifyEvent,
    pub source: String,
    /// The commit the event is about.
    pub commit: Option<String>,
    /// The bounded reason ([`crate::report::Reason`]) of a failure.
    pub reason: Option<String>,
    pub message: String,
    /// The object the event is about (`Kind/namespace/name`), for drift.
    pub object: Option<String>,
}

/// A webhook's body: the notification, when, and who sent it.
#[derive(Serialize)]
struct Payload<'a> {
    #[serde(flatten)]
    notification: &'a Notification,
    time: String,
    agent: &'static str,
}

/// The body a generic webhook receives (what its signature covers, byte for byte).
pub fn webhook_body(n: &Notification, time: SystemTime) -> Vec<u8> {
    let payload = Payload { notification: n, time: rfc3339(time), agent: "driftless" };
    // a struct of strings always serializes
    serde_json::to_vec(&payload).unwrap_or_default()
}

/// The request to a generic webhook, signed when there is a secret.
pub fn webhook_request(url: &str, secret: Option<&[u8]>, n: &Notification, time: SystemTime) -> Result<Request, HttpError> {
    let body = webhook_body(n, time);
    let mut headers = vec![(CONTENT_TYPE, "application/json".to_string()), (USER_AGENT, user_agent())];
    if let Some(secret) = secret {
        if secret.is_empty() {
            return Err(HttpError::InvalidRequest("the webhook secret is empty"));
        }
        headers.push((HeaderName::from_static("x-signature-256"), format!("sha256={}", webhook::sign(secret, &body))));
    }
    Ok(Request { method: Method::POST, url: url.to_string(), headers, body })
}

/// `&`, `<` and `>` as Slack wants them in text.
pub fn escape_slack(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

/// One line: source, event, short commit, reason, object and message, escaped for Slack.
pub fn slack_text(n: &Notification) -> String {
    let mut line = format!("[{}] {}", n.source, n.event.as_str());
    if let Some(commit) = &n.commit {
        line.push_str(&format!(" at {}", crate::source::short(commit)));
    }
    if let Some(reason) = &n.reason {
        line.push_str(&format!(" ({reason})"));
    }
    if let Some(object) = &n.object {
        line.push_str(&format!(" {object}"));
    }
    if !n.message.is_empty() {
        line.push_str(": ");
        line.push_str(&n.message);
    }
    let line = line.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ");
    let line =
        if line.chars().count() > MAX_SLACK_TEXT { line.chars().take(MAX_SLACK_TEXT - 3).chain("...".chars()).collect() } else { line };
    escape_slack(&line)
}

/// The request to a Slack incoming webhook.
pub fn slack_request(url: &str, n: &Notification) -> Request {
    let body = json!({ "text": slack_text(n) }).to_string().into_bytes();
    Request {
        method: Method::POST,
        url: url.to_string(),
        headers: vec![(CONTENT_TYPE, "application/json".to_string()), (USER_AGENT, user_agent())],
        body,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::webhook::{verify, Forge};
    use std::time::Duration;

    fn failed() -> Notification {
        Notification {
            event: NotifyEvent::SyncFailed,
            source: "shop".into(),
            commit: Some("0123456789abcdef0123456789abcdef01234567".into()),
            reason: Some("ApplyFailed".into()),
            message: "apply failed: <Deployment> web & db\nrejected".into(),
            object: None,
        }
    }

    #[test]
    fn the_webhook_body_is_the_notification_with_time_and_agent() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_795_000_000);
        let req = webhook_request("http://h/x", None, &failed(), t).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(v["event"], "SyncFailed");
        assert_eq!(v["source"], "shop");
        assert_eq!(v["reason"], "ApplyFailed");
        assert_eq!(v["object"], serde_json::Value::Null);
        assert_eq!(v["time"], "2026-11-18T11:06:40Z");
        assert_eq!(v["agent"], "driftless");
        assert_eq!(req.header("x-signature-256"), None, "no secret, no signature");
        assert_eq!(req.header("content-type"), Some("application/json"));
    }

    #[test]
    fn the_webhook_signature_verifies_over_the_exact_body() {
        let req = webhook_request("http://h/x", Some(b"s3cret"), &failed(), SystemTime::now()).unwrap();
        let sig = req.header("x-signature-256").unwrap();
        assert_eq!(verify(b"s3cret", [("x-signature-256", sig.as_bytes())], &req.body), Some(Forge::Generic));
        assert_eq!(verify(b"other", [("x-signature-256", sig.as_bytes())], &req.body), None);
        assert!(webhook_request("http://h/x", Some(b""), &failed(), SystemTime::now()).is_err(), "an empty secret signs nothing");
    }

    #[test]
    fn slack_text_is_one_escaped_line() {
        let text = slack_text(&failed());
        assert_eq!(text, "[shop] SyncFailed at 0123456789ab (ApplyFailed): apply failed: &lt;Deployment&gt; web &amp; db rejected");
        let req = slack_request("https://hooks.slack.com/services/x", &failed());
        let v: serde_json::Value = serde_json::from_slice(&req.body).unwrap();
        assert_eq!(v, json!({ "text": text }));
        let long = Notification { message: "x".repeat(5000), commit: None, reason: None, ..failed() };
        assert!(slack_text(&long).chars().count() <= MAX_SLACK_TEXT);
    }

    #[test]
    fn events_serialize_with_their_names() {
        for e in [
            NotifyEvent::Synced,
            NotifyEvent::SyncFailed,
            NotifyEvent::HealthCheckFailed,
            NotifyEvent::PruneHeld,
            NotifyEvent::DriftCorrected,
            NotifyEvent::RolledBack,
        ] {
            assert_eq!(serde_json::to_value(e).unwrap(), json!(e.as_str()));
        }
    }
}
