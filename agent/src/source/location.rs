//! Source URLs: which transport a URL uses, the URL handed to libgit2, and for ssh the host and
//! port that the host key is checked against.

use std::path::Path;

use super::{redact_url, userinfo_end, Auth, SourceError, SourceSpec};

/// The default ssh port; known_hosts entries for other ports are written `[host]:port`.
pub(crate) const SSH_DEFAULT_PORT: u16 = 22;

/// How the remote is reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Transport {
    /// `https://` (libgit2 verifies the certificate).
    Https,
    /// `http://` and `git://`: no transport security (for loopback tests and mirrors).
    Plain,
    /// `ssh://` or scp-like `user@host:path`.
    Ssh,
    /// `file://` or a local path.
    Local,
}

/// A parsed source URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Location {
    transport: Transport,
    /// What libgit2 is given.
    fetch_url: String,
    /// For ssh: the host (without brackets) and port.
    ssh_host: Option<(String, u16)>,
    /// For `http://` and `https://`: the host (lowercase, IPv6 in brackets), the only one
    /// credentials are sent to.
    http_host: Option<String>,
}

impl Location {
    /// Parses a source URL: `https://`, `http://`, `git://`, `ssh://` (and `ssh+git://`,
    /// `git+ssh://`), scp-like `[user@]host:path`, `file://`, or a local path (absolute, or
    /// relative to the current directory, turned into a `file://` URL).
    pub(crate) fn parse(url: &str) -> Result<Self, SourceError> {
        let invalid = |reason: &str| SourceError::InvalidUrl { url: redact_url(url), reason: reason.to_string() };
        let url = url.trim();
        if url.is_empty() {
            return Err(invalid("the URL is empty"));
        }
        if url.contains(['\0', '\n', '\r']) {
            return Err(invalid("the URL contains control characters"));
        }
        if let Some(idx) = url.find("://") {
            let scheme = url[..idx].to_ascii_lowercase();
            let transport = match scheme.as_str() {
                "https" => Transport::Https,
                "http" | "git" => Transport::Plain,
                "file" => Transport::Local,
                s if is_ssh_scheme(s) => Transport::Ssh,
                _ => return Err(invalid(&format!("unsupported scheme {scheme:?}"))),
            };
            let ssh_host = if transport == Transport::Ssh {
                let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
                let host = match parsed.host() {
                    Some(url::Host::Domain(d)) => d.to_ascii_lowercase(),
                    Some(url::Host::Ipv4(a)) => a.to_string(),
                    Some(url::Host::Ipv6(a)) => a.to_string(),
                    None => return Err(invalid("the URL has no host")),
                };
                Some((host, parsed.port().unwrap_or(SSH_DEFAULT_PORT)))
            } else {
                None
            };
            let http_host = if matches!(scheme.as_str(), "http" | "https") {
                let parsed = url::Url::parse(url).map_err(|e| invalid(&e.to_string()))?;
                Some(http_host_of(&parsed).ok_or_else(|| invalid("the URL has no host"))?)
            } else {
                None
            };
            return Ok(Self { transport, fetch_url: url.to_string(), ssh_host, http_host });
        }
        if let Some(host) = scp_like_host(url) {
            if host.is_empty() {
                return Err(invalid("the URL has no host"));
            }
            return Ok(Self {
                transport: Transport::Ssh,
                fetch_url: url.to_string(),
                ssh_host: Some((host.to_ascii_lowercase(), SSH_DEFAULT_PORT)),
                http_host: None,
            });
        }
        // A local path.
        let absolute = std::path::absolute(Path::new(url)).map_err(|e| invalid(&e.to_string()))?;
        let file_url = url::Url::from_file_path(&absolute).map_err(|()| invalid("not an absolute local path"))?;
        Ok(Self { transport: Transport::Local, fetch_url: file_url.to_string(), ssh_host: None, http_host: None })
    }

    /// The URL given to libgit2.
    pub(crate) fn fetch_url(&self) -> &str {
        &self.fetch_url
    }

    /// The transport.
    pub(crate) fn transport(&self) -> Transport {
        self.transport
    }

    /// For ssh URLs, the host and port.
    pub(crate) fn ssh_host(&self) -> Option<(&str, u16)> {
        self.ssh_host.as_ref().map(|(h, p)| (h.as_str(), *p))
    }

    /// Refuses what can be refused before connecting: an ssh URL without a known_hosts file,
    /// credentials over plain `http://` without `insecure_http`.
    pub(crate) fn check_auth(&self, spec: &SourceSpec) -> Result<(), SourceError> {
        if self.transport == Transport::Ssh && spec.auth.known_hosts_file().is_none() {
            return Err(SourceError::KnownHostsRequired { url: redact_url(&spec.url) });
        }
        spec.check_plain_http()
    }

    /// For an http(s) source, the host of `url` (what libgit2 asks credentials for) when it is
    /// not the configured host, as after a redirect: no credentials go there. `None` when they
    /// may be sent (the same host, or a transport without redirects).
    pub(crate) fn foreign_host(&self, url: &str) -> Option<String> {
        let configured = self.http_host.as_deref()?;
        match url::Url::parse(url).ok().as_ref().and_then(http_host_of) {
            Some(host) if host == configured => None,
            Some(host) => Some(host),
            None => Some("a URL without a host".into()),
        }
    }
}

/// The host of an http(s) URL, lowercase (IPv6 addresses in brackets).
fn http_host_of(url: &url::Url) -> Option<String> {
    url.host_str().filter(|h| !h.is_empty()).map(str::to_ascii_lowercase)
}

/// What credentials `url` would send over plain `http://` with `auth`: the configured token or
/// username/password, or a password in the URL's user info. `None` for other schemes, or
/// without credentials.
pub(crate) fn plain_http_credentials(url: &str, auth: &Auth) -> Option<&'static str> {
    let (scheme, rest) = url.trim().split_once("://")?;
    if !scheme.eq_ignore_ascii_case("http") {
        return None;
    }
    match auth {
        Auth::Token { .. } => return Some("a token"),
        Auth::Basic { .. } => return Some("a username and password"),
        Auth::None | Auth::Ssh { .. } => {}
    }
    let at = userinfo_end(rest)?;
    rest[..at].contains(':').then_some("a password in the URL")
}

/// `ssh`, `ssh+git`, `git+ssh` (case-insensitive).
pub(crate) fn is_ssh_scheme(scheme: &str) -> bool {
    matches!(scheme.to_ascii_lowercase().as_str(), "ssh" | "ssh+git" | "git+ssh")
}

/// For an scp-like URL (`[user@]host:path`: a `:` before any `/`), its host. Git's rule: a
/// colon before the first slash makes it scp-like; `[host]` brackets are allowed.
fn scp_like_host(url: &str) -> Option<&str> {
    let colon = if let Some(open) = url.find("@[").map(|i| i + 1).or_else(|| url.starts_with('[').then_some(0)) {
        // `[user@][host]:path`
        let close = url[open..].find("]:").map(|i| open + i + 1)?;
        if url[..close].contains('/') {
            return None;
        }
        close
    } else {
        let colon = url.find(':')?;
        if url[..colon].contains('/') {
            return None;
        }
        colon
    };
    let userhost = &url[..colon];
    let host = userhost.rsplit_once('@').map_or(userhost, |(_, h)| h);
    Some(host.trim_start_matches('[').trim_end_matches(']'))
}

/// A full 40-hex (sha1) commit id.
pub(crate) fn is_full_sha(s: &str) -> bool {
    s.len() == 40 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::testutil::spec_for;

    #[test]
    fn parses_transports() {
        let l = Location::parse("https://example.com/org/repo.git").unwrap();
        assert_eq!(l.transport(), Transport::Https);
        assert_eq!(l.fetch_url(), "https://example.com/org/repo.git");

        let l = Location::parse("http://127.0.0.1:8080/r.git").unwrap();
        assert_eq!(l.transport(), Transport::Plain);

        let l = Location::parse("ssh://git@Example.com:2222/org/repo.git").unwrap();
        assert_eq!(l.transport(), Transport::Ssh);
        assert_eq!(l.ssh_host(), Some(("example.com", 2222)));

        let l = Location::parse("ssh://git@[::1]/repo.git").unwrap();
        assert_eq!(l.ssh_host(), Some(("::1", 22)));

        let l = Location::parse("git@github.com:org/repo.git").unwrap();
        assert_eq!(l.transport(), Transport::Ssh);
        assert_eq!(l.ssh_host(), Some(("github.com", 22)));
        assert_eq!(l.fetch_url(), "git@github.com:org/repo.git");

        let l = Location::parse("host.example:repo").unwrap();
        assert_eq!(l.ssh_host(), Some(("host.example", 22)));

        let l = Location::parse("git@[::1]:repo.git").unwrap();
        assert_eq!(l.ssh_host(), Some(("::1", 22)));

        let l = Location::parse("file:///srv/repo.git").unwrap();
        assert_eq!(l.transport(), Transport::Local);
        assert_eq!(l.fetch_url(), "file:///srv/repo.git");
    }

    #[test]
    fn local_paths_become_file_urls() {
        let l = Location::parse("/srv/git/my repo").unwrap();
        assert_eq!(l.transport(), Transport::Local);
        assert_eq!(l.fetch_url(), "file:///srv/git/my%20repo");

        let l = Location::parse("some/relative:dir").unwrap();
        assert_eq!(l.transport(), Transport::Local);
        let cwd = std::env::current_dir().unwrap();
        let want = url::Url::from_file_path(cwd.join("some/relative:dir")).unwrap();
        assert_eq!(l.fetch_url(), want.as_str());
    }

    #[test]
    fn rejects_bad_urls_without_leaking() {
        let err = Location::parse("ftp://u:hunter2@example.com/x").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("unsupported scheme"), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        assert!(matches!(Location::parse("  "), Err(SourceError::InvalidUrl { .. })));
    }

    #[test]
    fn ssh_requires_known_hosts() {
        let spec = |url: &str, auth: Auth| SourceSpec { auth, ..spec_for(url) };
        let ssh_auth = Auth::Ssh { key_file: "/k".into(), known_hosts_file: None, passphrase_file: None };
        for url in ["ssh://git@127.0.0.1:1/x.git", "git@example.com:org/x.git"] {
            let l = Location::parse(url).unwrap();
            let err = l.check_auth(&spec(url, ssh_auth.clone())).unwrap_err();
            assert!(err.to_string().contains("requires a known_hosts file"), "{err}");
            assert!(l.check_auth(&spec(url, Auth::None)).is_err());
        }
        let with_kh = Auth::Ssh { key_file: "/k".into(), known_hosts_file: Some("/kh".into()), passphrase_file: None };
        let url = "ssh://git@127.0.0.1:1/x.git";
        assert!(Location::parse(url).unwrap().check_auth(&spec(url, with_kh)).is_ok());
        let url = "https://example.com/x.git";
        assert!(Location::parse(url).unwrap().check_auth(&spec(url, Auth::None)).is_ok());
    }

    #[test]
    fn credentials_go_only_to_the_configured_http_host() {
        let l = Location::parse("http://Git.Example:8080/org/repo.git").unwrap();
        assert_eq!(l.foreign_host("http://git.example:8080/org/repo.git"), None);
        // another port or path, or an upgrade to https, is the same host
        assert_eq!(l.foreign_host("https://GIT.example/other/repo.git/info/refs"), None);
        assert_eq!(l.foreign_host("http://evil.example:8080/org/repo.git").as_deref(), Some("evil.example"));
        assert_eq!(l.foreign_host("http://git.example.evil/x").as_deref(), Some("git.example.evil"));
        assert!(l.foreign_host("not a url").is_some());
        let l = Location::parse("https://[::1]:8443/r.git").unwrap();
        assert_eq!(l.foreign_host("https://[::1]/r.git"), None);
        assert_eq!(l.foreign_host("https://127.0.0.1/r.git").as_deref(), Some("127.0.0.1"));
        // transports without redirects are not checked
        for url in ["ssh://git@host/x.git", "git@host:x.git", "file:///srv/x.git", "git://host/x.git"] {
            assert_eq!(Location::parse(url).unwrap().foreign_host("http://elsewhere/x"), None, "{url}");
        }
    }

    #[test]
    fn full_sha_detection() {
        assert!(is_full_sha("0123456789abcdef0123456789ABCDEF01234567"));
        assert!(!is_full_sha("0123456789abcdef"));
        assert!(!is_full_sha("g123456789abcdef0123456789abcdef01234567"));
    }
}
