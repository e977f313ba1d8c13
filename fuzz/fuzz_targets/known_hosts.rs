//! The known_hosts parser (`driftless::source::KnownHosts`) over arbitrary text, then host key
//! checks: for hosts and keys taken from the input's own lines (so matches are reached), and for
//! a fixed host and key. Must never panic; a key marked `@revoked` on any line is never a match;
//! a plain `host keytype key` line for a simple host name makes that key match for that host
//! unless a revoked or negated line says otherwise.
#![no_main]

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use driftless::source::{HostKeyStatus, KnownHosts};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let known = KnownHosts::parse(&text);
    let _ = known.len();
    let _ = known.check("github.com", 22, "ssh-ed25519", b"\0\0\0\x0bssh-ed25519");

    let revoked: Vec<Vec<u8>> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            (f.next()? == "@revoked").then_some(())?;
            // only lines whose host field is certainly valid: plain patterns
            let hosts = f.next()?;
            let plain = hosts.bytes().all(|b| b.is_ascii_alphanumeric() || b"*.-,".contains(&b));
            (plain && hosts.bytes().any(|b| b != b',')).then_some(())?;
            f.nth(1).and_then(|k| STANDARD.decode(k).ok())
        })
        .collect();

    for line in text.lines().take(8) {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (marked, hosts, key_type, key) = match fields.as_slice() {
            [m, h, t, k, ..] if m.starts_with('@') => (true, *h, *t, *k),
            // a first field starting with '@' is a marker, known or not
            [h, t, k, ..] => (h.starts_with('@'), *h, *t, *k),
            _ => continue,
        };
        let Ok(key) = STANDARD.decode(key) else { continue };
        for pattern in hosts.split(',').take(4) {
            let (host, port) = match pattern.strip_prefix('[').and_then(|p| p.split_once("]:")) {
                Some((h, p)) => (h, p.parse::<u16>().unwrap_or(22)),
                None => (pattern.trim_start_matches('!'), 22),
            };
            for port in [port, 22, 2222] {
                let status = known.check(host, port, key_type, &key);
                let _ = known.verify(host, port, key_type, &key);
                if revoked.contains(&key) {
                    assert_eq!(status, HostKeyStatus::Revoked, "{host}:{port}");
                }
                // The simplest case: a plain line for a plain host name, nothing revoked or
                // negated anywhere, port 22: the key must match.
                let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
                if port == 22
                    && !marked
                    && !line.trim_start().starts_with('#')
                    && plain(host)
                    && pattern == host
                    && !hosts.starts_with('|')
                    && !text.contains("@revoked")
                    && !text.contains('!')
                {
                    assert_eq!(status, HostKeyStatus::Match, "{host} {key_type} in {line:?}");
                }
            }
        }
    }
});
