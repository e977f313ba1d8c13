//! Push webhooks: which request may trigger a source. The payload itself is never trusted: a
//! good signature only triggers an immediate check of the source's remote ref.
//!
//! | forge    | header                 | value                               |
//! |----------|------------------------|-------------------------------------|
//! | GitHub   | `X-Hub-Signature-256`  | `sha256=` + hex HMAC-SHA256 of body |
//! | Gitea    | `X-Gitea-Signature`    | hex HMAC-SHA256 of body             |
//! | GitLab   | `X-Gitlab-Token`       | the secret itself                   |
//! | generic  | `X-Signature-256`      | `sha256=` + hex HMAC-SHA256 of body |
//!
//! Every comparison is constant-time.

use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// The most a webhook body may be.
pub const MAX_BODY: usize = 1 << 20;

/// Which header proved the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Forge {
    GitHub,
    Gitea,
    GitLab,
    Generic,
}

/// Checks a request's headers (name lowercased, value) and body against the secret. Returns the
/// forge whose proof matched, or `None`.
pub fn verify<'a>(secret: &[u8], headers: impl IntoIterator<Item = (&'a str, &'a [u8])>, body: &[u8]) -> Option<Forge> {
    if secret.is_empty() {
        return None;
    }
    let mut verified = None;
    for (name, value) in headers {
        let ok = match name {
            "x-hub-signature-256" => value.strip_prefix(b"sha256=").is_some_and(|hex| hmac_matches(secret, body, hex)),
            "x-signature-256" => value.strip_prefix(b"sha256=").is_some_and(|hex| hmac_matches(secret, body, hex)),
            "x-gitea-signature" => hmac_matches(secret, body, value),
            "x-gitlab-token" => bool::from(value.ct_eq(secret)),
            _ => continue,
        };
        if !ok {
            // a present but wrong proof is a refusal, whatever else the request carries
            return None;
        }
        verified = verified.or(Some(match name {
            "x-hub-signature-256" => Forge::GitHub,
            "x-gitea-signature" => Forge::Gitea,
            "x-gitlab-token" => Forge::GitLab,
            _ => Forge::Generic,
        }));
    }
    verified
}

/// Whether `hex` is the hex HMAC-SHA256 of `body` under `secret`, compared in constant time.
fn hmac_matches(secret: &[u8], body: &[u8], hex: &[u8]) -> bool {
    let Some(given) = decode_hex(hex) else { return false };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else { return false };
    mac.update(body);
    mac.verify_slice(&given).is_ok()
}

fn decode_hex(hex: &[u8]) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    hex.chunks(2).map(|p| Some(digit(p[0])? << 4 | digit(p[1])?)).collect()
}

/// The hex HMAC-SHA256 of a body, as a forge would send it.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(body);
    mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect()
}

/// A token bucket per source: at most `burst` triggers at once, refilled one per `every`.
#[derive(Debug)]
pub struct RateLimit {
    tokens: f64,
    burst: f64,
    every: Duration,
    last: Instant,
}

impl RateLimit {
    pub fn new(burst: u32, every: Duration) -> Self {
        RateLimit { tokens: burst as f64, burst: burst as f64, every, last: Instant::now() }
    }

    /// Whether a token is left at `now` (none is taken).
    pub fn available(&mut self, now: Instant) -> bool {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() / self.every.as_secs_f64();
        self.tokens = (self.tokens + refill).min(self.burst);
        self.last = now;
        self.tokens >= 1.0
    }

    /// Takes a token at `now`; false when the source is over its rate.
    pub fn allow(&mut self, now: Instant) -> bool {
        if self.available(now) {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"s3cret";
    const BODY: &[u8] = br#"{"ref":"refs/heads/main"}"#;

    #[test]
    fn github_gitea_gitlab_and_generic_proofs_are_accepted() {
        let sig = sign(SECRET, BODY);
        let gh = format!("sha256={sig}");
        assert_eq!(verify(SECRET, [("x-hub-signature-256", gh.as_bytes())], BODY), Some(Forge::GitHub));
        assert_eq!(verify(SECRET, [("x-gitea-signature", sig.as_bytes())], BODY), Some(Forge::Gitea));
        assert_eq!(verify(SECRET, [("x-gitlab-token", SECRET)], BODY), Some(Forge::GitLab));
        assert_eq!(verify(SECRET, [("x-signature-256", gh.as_bytes())], BODY), Some(Forge::Generic));
        let upper = format!("sha256={}", sig.to_uppercase());
        assert_eq!(verify(SECRET, [("x-hub-signature-256", upper.as_bytes())], BODY), Some(Forge::GitHub));
    }

    #[test]
    fn wrong_or_missing_proofs_are_refused() {
        let sig = sign(b"other", BODY);
        let gh = format!("sha256={sig}");
        assert_eq!(verify(SECRET, [("x-hub-signature-256", gh.as_bytes())], BODY), None);
        assert_eq!(verify(SECRET, [("x-hub-signature-256", sign(SECRET, BODY).as_bytes())], BODY), None, "no sha256= prefix");
        assert_eq!(verify(SECRET, [("x-gitlab-token", &b"s3cre"[..])], BODY), None);
        assert_eq!(verify(SECRET, [("x-gitea-signature", &b"zz"[..])], BODY), None);
        assert_eq!(verify(SECRET, [("content-type", &b"application/json"[..])], BODY), None);
        assert_eq!(verify(b"", [("x-gitlab-token", &b""[..])], BODY), None, "an empty secret proves nothing");
    }

    #[test]
    fn a_signature_over_another_body_is_refused() {
        let gh = format!("sha256={}", sign(SECRET, BODY));
        assert_eq!(verify(SECRET, [("x-hub-signature-256", gh.as_bytes())], b"{}"), None);
    }

    #[test]
    fn one_bad_proof_spoils_a_good_one() {
        let good = format!("sha256={}", sign(SECRET, BODY));
        assert_eq!(verify(SECRET, [("x-gitlab-token", &b"wrong"[..]), ("x-hub-signature-256", good.as_bytes())], BODY), None);
    }

    #[test]
    fn the_rate_limit_allows_a_burst_then_one_per_period() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(3, Duration::from_secs(1));
        assert!(rl.allow(t0) && rl.allow(t0) && rl.allow(t0));
        assert!(!rl.allow(t0));
        assert!(!rl.allow(t0 + Duration::from_millis(500)));
        assert!(rl.allow(t0 + Duration::from_millis(1100)));
        assert!(!rl.allow(t0 + Duration::from_millis(1200)));
    }

    #[test]
    fn looking_at_the_rate_limit_takes_nothing() {
        let t0 = Instant::now();
        let mut rl = RateLimit::new(1, Duration::from_secs(6));
        assert!(rl.available(t0) && rl.available(t0));
        assert!(rl.allow(t0));
        assert!(!rl.available(t0 + Duration::from_secs(5)));
        assert!(rl.available(t0 + Duration::from_secs(6)));
    }
}
