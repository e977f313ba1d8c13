//! Source URLs: which transport a URL uses, the URL handed to libgit2, and for ssh the host and
//! port that the host key is checked against.

use std::path::Path;

use super::{redact_url, SourceError, SourceSpec};

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
            return Ok(Self { transport, fetch_url: url.to_string(), ssh_host });
        }
        if let Some(host) = scp_like_host(url) {
            if host.is_empty() {
                return Err(invalid("the URL has no host"));
            }
            return Ok(Self {
                transport: Transport::Ssh,
                fetch_url: url.to_string(),
                ssh_host: Some((host.to_ascii_lowercase(), SSH_DEFAULT_PORT)),
            });
        }
        // A local path.
        let absolute = std::path::absolute(Path::new(url)).map_err(|e| invalid(&e.to_string()))?;
        let file_url = url::Url::from_file_path(&absolute).map_err(|()| invalid("not an absolute local path"))?;
        Ok(Self { transport: Transport::Local, fetch_url: file_url.to_string(), ssh_host: None })
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

    /// Refuses what can be refused before connecting: an ssh URL without a known_hosts file.
    pub(crate) fn check_auth(&self, spec: &SourceSpec) -> Result<(), SourceError> {
        if self.transport == Transport::Ssh && spec.auth.known_hosts_file().is_none() {
            return Err(SourceError::KnownHostsRequired { url: redact_url(&spec.url) });
        }
        Ok(())
    }
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
    use crate::source::Auth;

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
        let spec = |url: &str, auth: Auth| SourceSpec { url: url.into(), reference: None, path: String::new(), auth };
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
    fn full_sha_detection() {
        assert!(is_full_sha("0123456789abcdef0123456789ABCDEF01234567"));
        assert!(!is_full_sha("0123456789abcdef"));
        assert!(!is_full_sha("g123456789abcdef0123456789abcdef01234567"));
    }
}
