//! Webhook proofs (`driftless::status::webhook::verify`) against an independent oracle: a request
//! is accepted exactly when it carries at least one known proof header and every known proof
//! header it carries is right (GitHub/generic: `sha256=` + hex HMAC-SHA256 of the body, any case;
//! Gitea: the hex HMAC alone; GitLab: the secret itself), and the secret is not empty. Forged
//! headers come from the input; right ones are built from it too, so both sides are reached.
#![no_main]

use arbitrary::Arbitrary;
use driftless::status::webhook::{sign, verify, Forge};
use libfuzzer_sys::fuzz_target;

const NAMES: [&str; 6] =
    ["x-hub-signature-256", "x-signature-256", "x-gitea-signature", "x-gitlab-token", "content-type", "x-hub-signature"];

#[derive(Arbitrary, Debug)]
struct Header {
    name: u8,
    /// Use the right proof for this header (possibly upper-cased) instead of `value`.
    right: bool,
    upper: bool,
    value: Vec<u8>,
}

#[derive(Arbitrary, Debug)]
struct Request {
    secret: Vec<u8>,
    headers: Vec<Header>,
    body: Vec<u8>,
}

fn hex_eq_ignore_case(given: &[u8], want: &str) -> bool {
    given.eq_ignore_ascii_case(want.as_bytes())
}

fuzz_target!(|req: Request| {
    let sig = sign(&req.secret, &req.body);
    let headers: Vec<(&'static str, Vec<u8>)> = req
        .headers
        .iter()
        .take(8)
        .map(|h| {
            let name = NAMES[h.name as usize % NAMES.len()];
            let value = if h.right {
                let hex = if h.upper { sig.to_uppercase() } else { sig.clone() };
                match name {
                    "x-hub-signature-256" | "x-signature-256" => format!("sha256={hex}").into_bytes(),
                    "x-gitlab-token" => req.secret.clone(),
                    _ => hex.into_bytes(),
                }
            } else {
                h.value.clone()
            };
            (name, value)
        })
        .collect();

    let got = verify(&req.secret, headers.iter().map(|(n, v)| (*n, v.as_slice())), &req.body);

    // The oracle.
    let mut first = None;
    let mut all_right = true;
    for (name, value) in &headers {
        let (ok, forge) = match *name {
            "x-hub-signature-256" => (value.strip_prefix(b"sha256=").is_some_and(|h| hex_eq_ignore_case(h, &sig)), Forge::GitHub),
            "x-signature-256" => (value.strip_prefix(b"sha256=").is_some_and(|h| hex_eq_ignore_case(h, &sig)), Forge::Generic),
            "x-gitea-signature" => (hex_eq_ignore_case(value, &sig), Forge::Gitea),
            "x-gitlab-token" => (value == &req.secret, Forge::GitLab),
            _ => continue,
        };
        all_right &= ok;
        first = first.or(Some(forge));
    }
    let want = if req.secret.is_empty() || !all_right { None } else { first };
    assert_eq!(got, want, "headers {headers:?}");
});
