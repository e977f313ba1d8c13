//! Talking to the remote: credentials, host key checks, resolving the ref, fetching.
//!
//! Every connection gets fresh callbacks built from the source's [`Auth`]: secret files are
//! read just before connecting, the credentials callback answers at most once per connection
//! (a second request means the remote refused them, and libgit2 would otherwise ask forever),
//! and ssh host keys are checked against the source's known_hosts file. When a callback fails
//! it records a precise [`SourceError`], which is returned instead of libgit2's generic one.
//!
//! Fetches write into a private namespace (`refs/driftless/...`, mirroring the remote's names)
//! so they never touch anything else and never download tags automatically.
//!
//! Every remote check and every fetch is one session with a deadline (the source's `timeout`
//! from its start) and, for fetches, a byte budget (`max_fetch_bytes`, over all its attempts).
//! Both are checked on each transfer-progress and sideband callback (libgit2 calls the first at
//! least every 100 KiB received and for each object indexed), before each fetch attempt and in
//! the credential and certificate callbacks; a callback that returns "stop" makes libgit2 abort
//! the transfer. While the remote sends nothing no callback runs, so libgit2's connect and socket
//! read/write timeouts, infinite by default, are set as well (see [`bound_socket_waits`]).

use std::cell::{Cell, RefCell};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use git2::{
    AutotagOption, CertificateCheckStatus, Cred, CredentialType, Direction, ErrorClass, ErrorCode, FetchOptions, Remote, RemoteCallbacks,
};

use super::known_hosts::{key_type_of_blob, KnownHosts};
use super::location::{is_full_sha, Transport};
use super::{parse_commit, scrub, Auth, Repo, SourceError};

/// The private namespace fetched refs are written under.
const PRIVATE_NS: &str = "refs/driftless/";

/// Credentials loaded from their files for one connection. `Debug` never shows them.
enum Secrets {
    None,
    UserPass { username: String, password: String },
    SshKey { key_file: PathBuf, passphrase: Option<String> },
}

impl std::fmt::Debug for Secrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Secrets::None => f.write_str("None"),
            Secrets::UserPass { .. } => f.write_str("UserPass(<redacted>)"),
            Secrets::SshKey { key_file, .. } => write!(f, "SshKey({})", key_file.display()),
        }
    }
}

impl Secrets {
    fn load(auth: &Auth) -> Result<Self, SourceError> {
        Ok(match auth {
            Auth::None => Secrets::None,
            Auth::Basic { username_file, password_file } => Secrets::UserPass {
                username: read_secret(username_file, "username", false)?,
                password: read_secret(password_file, "password", true)?,
            },
            Auth::Token { token_file, username } => Secrets::UserPass {
                username: username.clone().filter(|u| !u.is_empty()).unwrap_or_else(|| "git".to_string()),
                password: read_secret(token_file, "token", false)?,
            },
            Auth::Ssh { key_file, passphrase_file, .. } => {
                std::fs::metadata(key_file).map_err(|e| SourceError::Credentials {
                    what: "ssh key",
                    path: key_file.display().to_string(),
                    reason: e.to_string(),
                })?;
                let passphrase = passphrase_file.as_deref().map(|p| read_secret(p, "ssh key passphrase", true)).transpose()?;
                Secrets::SshKey { key_file: key_file.clone(), passphrase }
            }
        })
    }
}

/// Reads a secret file, without its trailing newline.
fn read_secret(path: &std::path::Path, what: &'static str, may_be_empty: bool) -> Result<String, SourceError> {
    let fail = |reason: String| SourceError::Credentials { what, path: path.display().to_string(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| fail(e.to_string()))?;
    let value = text.trim_end_matches(['\n', '\r']).to_string();
    if value.is_empty() && !may_be_empty {
        return Err(fail("the file is empty".into()));
    }
    Ok(value)
}

/// What one connection needs: the loaded secrets and known_hosts, and where callbacks leave
/// their error.
struct Session<'a> {
    repo: &'a Repo,
    secrets: Secrets,
    known_hosts: Option<KnownHosts>,
    failure: RefCell<Option<SourceError>>,
    credential_attempts: Cell<u32>,
    /// When the remote check or fetch must have finished.
    deadline: Instant,
    /// Bytes the session's earlier connections downloaded.
    received_before: Cell<u64>,
    /// Bytes the current connection downloaded so far.
    received_now: Cell<u64>,
}

impl<'a> Session<'a> {
    /// Loads everything from files; refuses an ssh URL without known_hosts (and credentials over
    /// plain http) before connecting. Starts the clock of the source's `timeout`.
    fn new(repo: &'a Repo) -> Result<Self, SourceError> {
        let deadline = Instant::now() + repo.spec.timeout;
        repo.location.check_auth(&repo.spec)?;
        bound_socket_waits(repo.spec.timeout);
        let known_hosts = match repo.location.transport() {
            Transport::Ssh => match repo.spec.auth.known_hosts_file() {
                Some(path) => Some(KnownHosts::load(path)?),
                None => return Err(SourceError::KnownHostsRequired { url: repo.display_url() }),
            },
            _ => None,
        };
        Ok(Self {
            repo,
            secrets: Secrets::load(&repo.spec.auth)?,
            known_hosts,
            failure: RefCell::new(None),
            credential_attempts: Cell::new(0),
            deadline,
            received_before: Cell::new(0),
            received_now: Cell::new(0),
        })
    }

    /// Bytes downloaded by the session so far.
    fn received(&self) -> u64 {
        self.received_before.get() + self.received_now.get()
    }

    /// The error for a session past its deadline.
    fn timeout_error(&self) -> SourceError {
        let received = self.received();
        SourceError::Timeout {
            url: self.repo.display_url(),
            timeout: humantime::format_duration(self.repo.spec.timeout).to_string(),
            detail: if received == 0 { String::new() } else { format!(" (stopped after {received} bytes)") },
        }
    }

    /// Fails once the deadline has passed.
    fn check_deadline(&self) -> Result<(), SourceError> {
        if Instant::now() >= self.deadline {
            return Err(self.timeout_error());
        }
        Ok(())
    }

    /// For callbacks that return "go on": false (and the failure recorded) past the deadline.
    fn in_time(&self) -> bool {
        match self.check_deadline() {
            Ok(()) => true,
            Err(e) => {
                *self.failure.borrow_mut() = Some(e);
                false
            }
        }
    }

    /// The transfer-progress callback: `received` bytes so far on this connection. False stops
    /// the transfer, past the deadline or over the byte budget.
    fn on_transfer(&self, received: u64) -> bool {
        self.received_now.set(received);
        let total = self.received();
        let limit = self.repo.spec.max_fetch_bytes;
        if total > limit {
            *self.failure.borrow_mut() = Some(SourceError::FetchTooLarge { url: self.repo.display_url(), received: total, limit });
            return false;
        }
        self.in_time()
    }

    fn fail(&self, err: SourceError) -> git2::Error {
        let message = err.to_string();
        *self.failure.borrow_mut() = Some(err);
        git2::Error::from_str(&message)
    }

    /// Fresh callbacks for one connection.
    fn callbacks(&self) -> RemoteCallbacks<'_> {
        self.credential_attempts.set(0);
        self.received_before.set(self.received_before.get() + self.received_now.replace(0));
        let mut cb = RemoteCallbacks::new();
        cb.credentials(|url, username_from_url, allowed| self.credentials(url, username_from_url, allowed));
        cb.transfer_progress(|progress| self.on_transfer(progress.received_bytes() as u64));
        cb.sideband_progress(|_| self.in_time());
        cb.certificate_check(|cert, host| {
            self.check_deadline().map_err(|e| self.fail(e))?;
            let Some(hostkey) = cert.as_hostkey() else {
                // TLS: keep libgit2's own verification.
                return Ok(CertificateCheckStatus::CertificatePassthrough);
            };
            let Some(known_hosts) = &self.known_hosts else {
                return Err(self.fail(SourceError::KnownHostsRequired { url: self.repo.display_url() }));
            };
            let (host, port) = self.repo.location.ssh_host().unwrap_or((host, 22));
            let Some(key) = hostkey.hostkey() else {
                return Err(self.fail(SourceError::Connect {
                    url: self.repo.display_url(),
                    reason: "the ssh server's host key is not available".into(),
                }));
            };
            let Some(key_type) = key_type_of_blob(key) else {
                return Err(self
                    .fail(SourceError::Connect { url: self.repo.display_url(), reason: "the ssh server's host key is malformed".into() }));
            };
            match known_hosts.verify(host, port, key_type, key) {
                Ok(()) => Ok(CertificateCheckStatus::CertificateOk),
                Err(e) => Err(self.fail(e)),
            }
        });
        cb
    }

    fn credentials(&self, url: &str, username_from_url: Option<&str>, allowed: CredentialType) -> Result<Cred, git2::Error> {
        self.check_deadline().map_err(|e| self.fail(e))?;
        let ssh_user = || username_from_url.filter(|u| !u.is_empty()).unwrap_or("git").to_string();
        // libgit2's ssh transport first asks for just the user name when the URL has none.
        if allowed == CredentialType::USERNAME {
            return Cred::username(&ssh_user());
        }
        let attempts = self.credential_attempts.get() + 1;
        self.credential_attempts.set(attempts);
        let auth_error = |reason: &str| SourceError::Auth { url: self.repo.display_url(), reason: reason.to_string() };
        // A redirect took the connection to another host: it gets no credentials, whatever
        // the source has.
        if let Some(host) = self.repo.location.foreign_host(url) {
            return Err(self.fail(auth_error(&format!(
                "the remote redirected to another host ({host}) that asks for credentials; \
                 they are only sent to the configured host"
            ))));
        }
        if attempts > 1 {
            return Err(self.fail(auth_error("the remote rejected the configured credentials")));
        }
        match &self.secrets {
            Secrets::UserPass { username, password } if allowed.contains(CredentialType::USER_PASS_PLAINTEXT) => {
                Cred::userpass_plaintext(username, password)
            }
            Secrets::SshKey { key_file, passphrase } if allowed.contains(CredentialType::SSH_KEY) => {
                Cred::ssh_key(&ssh_user(), None, key_file, passphrase.as_deref())
                    .map_err(|e| self.fail(auth_error(&format!("cannot use the ssh key: {}", scrub(e.message())))))
            }
            Secrets::None => Err(self.fail(auth_error("the remote requires credentials and the source has none"))),
            _ => Err(self.fail(auth_error(&format!(
                "the remote asks for credentials of another kind ({}) than the source has",
                describe_allowed(allowed)
            )))),
        }
    }

    /// The error to report for a failed libgit2 call: the callback's, or libgit2's (scrubbed).
    fn error(&self, err: &git2::Error, wrap: impl FnOnce(String) -> SourceError) -> SourceError {
        if let Some(failure) = self.failure.borrow_mut().take() {
            return failure;
        }
        let message = scrub(err.message());
        if err.code() == ErrorCode::Timeout || message.to_ascii_lowercase().contains("timed out") || Instant::now() >= self.deadline {
            return self.timeout_error();
        }
        if err.code() == ErrorCode::Auth || (err.class() == ErrorClass::Http && message.contains("authentication")) {
            return SourceError::Auth { url: self.repo.display_url(), reason: message };
        }
        wrap(message)
    }

    /// Whether an error came from a callback decision (auth, host key, deadline, size) that
    /// retrying with other fetch options cannot change.
    fn is_final(err: &SourceError) -> bool {
        matches!(
            err,
            SourceError::Auth { .. }
                | SourceError::Timeout { .. }
                | SourceError::FetchTooLarge { .. }
                | SourceError::InsecureHttp { .. }
                | SourceError::HostKeyUnknown { .. }
                | SourceError::HostKeyMismatch { .. }
                | SourceError::HostKeyRevoked { .. }
                | SourceError::KnownHostsRequired { .. }
                | SourceError::Credentials { .. }
        )
    }
}

/// Bounds libgit2's connect timeout and its socket read/write timeout (how long one wait for
/// the server may last) by `timeout`. Both are process-wide settings read when a connection is
/// made, so they are the smallest `timeout` of any source seen so far (sources with a longer
/// `timeout` tolerate no longer silence than that), and only ever lowered.
#[allow(unsafe_code)]
fn bound_socket_waits(timeout: Duration) {
    static CURRENT: Mutex<Option<Duration>> = Mutex::new(None);
    let mut current = CURRENT.lock().unwrap_or_else(PoisonError::into_inner);
    if current.is_some_and(|c| c <= timeout) {
        return;
    }
    let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX).max(1);
    // SAFETY: these set two C ints that libgit2 reads when it opens a socket (git2 warns that
    // the write is unsynchronized). Writers are serialized by the lock above, and a connection
    // made meanwhile reads the old or the new value: both bound the wait.
    unsafe {
        let _ = git2::opts::set_server_connect_timeout_in_milliseconds(ms);
        let _ = git2::opts::set_server_timeout_in_milliseconds(ms);
    }
    *current = Some(timeout);
}

fn describe_allowed(allowed: CredentialType) -> String {
    let names = [
        (CredentialType::USER_PASS_PLAINTEXT, "username/password"),
        (CredentialType::SSH_KEY, "ssh key"),
        (CredentialType::SSH_MEMORY, "ssh key"),
        (CredentialType::SSH_CUSTOM, "ssh custom"),
        (CredentialType::SSH_INTERACTIVE, "ssh keyboard-interactive"),
        (CredentialType::DEFAULT, "negotiate/ntlm"),
    ];
    let mut out: Vec<&str> = Vec::new();
    for (flag, name) in names {
        if allowed.contains(flag) && !out.contains(&name) {
            out.push(name);
        }
    }
    if out.is_empty() {
        "unknown".into()
    } else {
        out.join(", ")
    }
}

/// One advertised ref.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Advertised {
    pub(crate) name: String,
    pub(crate) oid: String,
    pub(crate) symref_target: Option<String>,
}

/// See [`Repo::remote_commit`].
pub(crate) fn remote_commit(repo: &Repo) -> Result<String, SourceError> {
    let reference = configured_reference(repo)?;
    if let Some(sha) = reference.as_deref().filter(|r| is_full_sha(r)) {
        // Still refuse an ssh URL without known_hosts, as for any other reference.
        repo.location.check_auth(&repo.spec)?;
        return Ok(sha.to_ascii_lowercase());
    }
    let session = Session::new(repo)?;
    let advertised = list_remote(&session)?;
    let wanted = reference.as_deref();
    let commit = resolve_ref(&advertised, wanted)
        .ok_or_else(|| SourceError::RefNotFound { reference: wanted.unwrap_or("HEAD").to_string(), url: repo.display_url() })?;
    tracing::debug!(url = %repo.display_url(), reference = wanted.unwrap_or("HEAD"), commit = %commit, "resolved remote ref");
    Ok(commit)
}

/// Connects and lists the remote's refs (`git ls-remote`).
fn list_remote(session: &Session<'_>) -> Result<Vec<Advertised>, SourceError> {
    let repo = session.repo;
    let connect_error = |reason: String| SourceError::Connect { url: repo.display_url(), reason };
    let mut remote = Remote::create_detached(repo.location.fetch_url()).map_err(|e| session.error(&e, connect_error))?;
    let connection =
        remote.connect_auth(Direction::Fetch, Some(session.callbacks()), None).map_err(|e| session.error(&e, connect_error))?;
    let heads = connection.list().map_err(|e| session.error(&e, connect_error))?;
    // git2 panics on ref names that are not UTF-8; a remote could send one.
    catch_unwind(AssertUnwindSafe(|| {
        heads
            .iter()
            .map(|h| Advertised {
                name: h.name().to_string(),
                oid: h.oid().to_string(),
                symref_target: h.symref_target().map(str::to_string),
            })
            .collect::<Vec<_>>()
    }))
    .map_err(|_| connect_error("the remote advertised a ref name that is not valid UTF-8".into()))
}

/// The configured reference, trimmed, `None` when empty; invalid names are refused.
fn configured_reference(repo: &Repo) -> Result<Option<String>, SourceError> {
    let Some(reference) = repo.spec.reference.as_deref().map(str::trim).filter(|r| !r.is_empty()) else {
        return Ok(None);
    };
    let invalid = || SourceError::InvalidReference { reference: reference.to_string(), url: repo.display_url() };
    if is_full_sha(reference) {
        return Ok(Some(reference.to_ascii_lowercase()));
    }
    let full = if reference.starts_with("refs/") { reference.to_string() } else { format!("refs/heads/{reference}") };
    if !git2::Reference::is_valid_name(&full) {
        return Err(invalid());
    }
    Ok(Some(reference.to_string()))
}

/// Resolves a reference against the advertised refs:
/// `None` is HEAD (its symref target when advertised, else HEAD's own id); a full SHA is
/// returned as is; `refs/...` is looked up as is; a bare name is a branch, else a tag. Tags are
/// peeled: the `^{}` entry is preferred when the remote advertises one.
pub(crate) fn resolve_ref(advertised: &[Advertised], reference: Option<&str>) -> Option<String> {
    let find = |name: &str| advertised.iter().find(|a| a.name == name).map(|a| a.oid.clone());
    let peeled = |name: &str| find(&format!("{name}^{{}}")).or_else(|| find(name));
    match reference {
        None => {
            let head = advertised.iter().find(|a| a.name == "HEAD")?;
            head.symref_target.as_deref().and_then(find).or_else(|| Some(head.oid.clone()))
        }
        Some(r) if is_full_sha(r) => Some(r.to_ascii_lowercase()),
        Some(r) if r.starts_with("refs/") || r == "HEAD" => peeled(r),
        Some(r) => find(&format!("refs/heads/{r}")).or_else(|| peeled(&format!("refs/tags/{r}"))),
    }
}

/// The advertised ref to fetch `commit` by name: one whose id (or peeled id) is the commit,
/// preferring the configured reference's own names. `None` when the commit is no ref's tip.
fn advertised_name_for(advertised: &[Advertised], commit: &str, reference: Option<&str>) -> Option<String> {
    let matching: Vec<&str> =
        advertised.iter().filter(|a| a.oid.eq_ignore_ascii_case(commit)).map(|a| a.name.strip_suffix("^{}").unwrap_or(&a.name)).collect();
    let preferred: Vec<String> = match reference {
        None => vec!["HEAD".into()],
        Some(r) if r.starts_with("refs/") || r == "HEAD" => vec![r.to_string()],
        Some(r) => vec![format!("refs/heads/{r}"), format!("refs/tags/{r}")],
    };
    preferred.into_iter().find(|p| matching.contains(&p.as_str())).or_else(|| matching.first().map(|m| m.to_string()))
}

/// The refspec fetching the advertised ref `name` into the private namespace (`refs/x` is
/// mirrored as `refs/driftless/x`).
fn private_refspec(name: &str) -> String {
    format!("+{name}:{PRIVATE_NS}{}", name.strip_prefix("refs/").unwrap_or(name))
}

/// See [`Repo::fetch`].
///
/// Lists the remote's refs first (an unreachable remote fails there, once). Then tries, in
/// order, until the commit is in the cache: an advertised ref whose tip is the commit, by name
/// (every server allows it); the commit id itself (servers may refuse ids they do not
/// advertise); every branch and tag. Each try is shallow (depth 1) first, and full when the
/// shallow fetch fails (libgit2's local transport does not support shallow fetches).
pub(crate) fn fetch(repo: &Repo, commit: &str) -> Result<(), SourceError> {
    let oid = parse_commit(commit)?;
    let commit = oid.to_string();
    let git = repo.git()?;
    if has_commit(&git, oid) {
        tracing::debug!(url = %repo.display_url(), commit = %commit, "commit already in the cache");
        return Ok(());
    }
    let reference = configured_reference(repo)?;
    let session = Session::new(repo)?;
    let url = repo.display_url();
    let advertised = list_remote(&session)?;

    let mut attempts: Vec<Vec<String>> = Vec::new();
    if let Some(name) = advertised_name_for(&advertised, &commit, reference.as_deref()) {
        attempts.push(vec![private_refspec(&name)]);
    }
    attempts.push(vec![format!("+{commit}:{PRIVATE_NS}commits/{commit}")]);
    attempts.push(vec![private_refspec("refs/heads/*"), private_refspec("refs/tags/*")]);

    let mut last_error: Option<SourceError> = None;
    for refspecs in &attempts {
        for depth in [1, 0] {
            session.check_deadline()?;
            match fetch_once(&git, &session, refspecs, depth) {
                Ok(()) => {
                    last_error = None;
                    break;
                }
                Err(e) if Session::is_final(&e) => return Err(e),
                Err(e) => {
                    tracing::debug!(url = %url, refspecs = ?refspecs, depth, error = %e, "fetch attempt failed");
                    last_error = Some(e);
                }
            }
        }
        if has_commit(&git, oid) {
            tracing::info!(url = %url, commit = %commit, "fetched commit");
            return Ok(());
        }
    }
    Err(match last_error {
        Some(SourceError::Fetch { reason, .. }) => SourceError::Fetch { url, commit, reason },
        Some(other) => other,
        None => SourceError::CommitNotFound { commit, url, detail: " (not reachable from the remote's branches and tags)".into() },
    })
}

/// One fetch of `refspecs` at `depth` (0 = full history).
fn fetch_once(git: &git2::Repository, session: &Session<'_>, refspecs: &[String], depth: i32) -> Result<(), SourceError> {
    let repo = session.repo;
    let fetch_error = |reason: String| SourceError::Fetch { url: repo.display_url(), commit: String::new(), reason };
    let mut remote = git.remote_anonymous(repo.location.fetch_url()).map_err(|e| session.error(&e, fetch_error))?;
    let mut options = FetchOptions::new();
    options.remote_callbacks(session.callbacks()).download_tags(AutotagOption::None).update_fetchhead(false).depth(depth);
    remote.fetch(refspecs, Some(&mut options), None).map_err(|e| session.error(&e, fetch_error))
}

/// Whether the cache has the commit (its tree comes with it: fetches are whole packs).
fn has_commit(git: &git2::Repository, oid: git2::Oid) -> bool {
    git.find_commit(oid).is_ok()
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use base64::Engine;
    use git2::Repository;

    use super::*;
    use crate::source::location::Location;
    use crate::source::testutil::*;
    use crate::source::ReadLimits;
    use crate::source::SourceSpec;

    fn adv(name: &str, oid: &str) -> Advertised {
        Advertised { name: name.into(), oid: oid.into(), symref_target: None }
    }

    fn open(spec: SourceSpec, dir: &std::path::Path) -> Repo {
        Repo::open(spec, &dir.join("cache")).unwrap()
    }

    fn with_ref(url: &str, reference: &str) -> SourceSpec {
        SourceSpec { reference: Some(reference.to_string()), ..spec_for(url) }
    }

    #[test]
    fn resolve_ref_rules() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let t = "c".repeat(40);
        let p = "d".repeat(40);
        let list = vec![
            Advertised { name: "HEAD".into(), oid: a.clone(), symref_target: Some("refs/heads/main".into()) },
            adv("refs/heads/main", &a),
            adv("refs/heads/dev", &b),
            adv("refs/tags/v1", &t),
            adv("refs/tags/v1^{}", &p),
            adv("refs/tags/light", &b),
            adv("refs/heads/both", &a),
            adv("refs/tags/both", &b),
            adv("refs/pull/1/head", &b),
        ];
        assert_eq!(resolve_ref(&list, None), Some(a.clone()));
        assert_eq!(resolve_ref(&list, Some("dev")), Some(b.clone()));
        assert_eq!(resolve_ref(&list, Some("v1")), Some(p.clone()), "annotated tags are peeled");
        assert_eq!(resolve_ref(&list, Some("refs/tags/v1")), Some(p.clone()));
        assert_eq!(resolve_ref(&list, Some("light")), Some(b.clone()));
        assert_eq!(resolve_ref(&list, Some("both")), Some(a.clone()), "branches win over tags");
        assert_eq!(resolve_ref(&list, Some("refs/pull/1/head")), Some(b.clone()));
        assert_eq!(resolve_ref(&list, Some(&"E".repeat(40))), Some("e".repeat(40)));
        assert_eq!(resolve_ref(&list, Some("missing")), None);
        assert_eq!(resolve_ref(&list, Some("refs/heads/missing")), None);
        // HEAD without a symref target: its own id.
        let detached = vec![adv("HEAD", &b), adv("refs/heads/main", &a)];
        assert_eq!(resolve_ref(&detached, None), Some(b.clone()));
        assert_eq!(resolve_ref(&[], None), None);
    }

    #[test]
    fn fetches_by_an_advertised_name_when_the_commit_is_a_tip() {
        let a = "a".repeat(40);
        let b = "b".repeat(40);
        let list = vec![
            adv("HEAD", &a),
            adv("refs/heads/main", &a),
            adv("refs/heads/other", &a),
            adv("refs/tags/v1", &"c".repeat(40)),
            adv("refs/tags/v1^{}", &b),
        ];
        assert_eq!(advertised_name_for(&list, &a, None).as_deref(), Some("HEAD"));
        assert_eq!(advertised_name_for(&list, &a, Some("other")).as_deref(), Some("refs/heads/other"));
        assert_eq!(advertised_name_for(&list, &a, Some("refs/heads/main")).as_deref(), Some("refs/heads/main"));
        assert_eq!(advertised_name_for(&list, &a, Some(&a)).as_deref(), Some("HEAD"));
        assert_eq!(advertised_name_for(&list, &b, Some("v1")).as_deref(), Some("refs/tags/v1"));
        assert_eq!(advertised_name_for(&list, &"d".repeat(40), None), None);
        assert_eq!(private_refspec("refs/heads/main"), "+refs/heads/main:refs/driftless/heads/main");
        assert_eq!(private_refspec("HEAD"), "+HEAD:refs/driftless/HEAD");
        assert_eq!(private_refspec("refs/tags/*"), "+refs/tags/*:refs/driftless/tags/*");
    }

    #[test]
    fn remote_commit_resolves_head_branches_tags_and_shas() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = make_repo(tmp.path(), "origin", &[("a.yaml", File(b"v: main\n"))]);
        let main = Repository::open(&origin).unwrap().refname_to_id("refs/heads/main").unwrap();
        let feature = commit_on(&origin, "feature", &[("a.yaml", File(b"v: feature\n"))]);
        let tag = annotated_tag(&origin, "v1.0.0", feature);
        assert_ne!(tag, feature);
        let url = origin.to_str().unwrap();

        assert_eq!(open(spec_for(url), tmp.path()).remote_commit().unwrap(), main.to_string());
        assert_eq!(open(with_ref(url, "main"), tmp.path()).remote_commit().unwrap(), main.to_string());
        assert_eq!(open(with_ref(url, "feature"), tmp.path()).remote_commit().unwrap(), feature.to_string());
        assert_eq!(open(with_ref(url, "refs/heads/feature"), tmp.path()).remote_commit().unwrap(), feature.to_string());
        assert_eq!(open(with_ref(url, "v1.0.0"), tmp.path()).remote_commit().unwrap(), feature.to_string());
        assert_eq!(open(with_ref(url, "refs/tags/v1.0.0"), tmp.path()).remote_commit().unwrap(), feature.to_string());
        assert_eq!(open(with_ref(url, " "), tmp.path()).remote_commit().unwrap(), main.to_string());

        // A full SHA is returned as is, without lookup (even one the remote does not have).
        let unknown = "ABCDEF0123456789ABCDEF0123456789ABCDEF01";
        assert_eq!(open(with_ref(url, unknown), tmp.path()).remote_commit().unwrap(), unknown.to_ascii_lowercase());

        // HEAD follows its symref target.
        Repository::open(&origin).unwrap().set_head("refs/heads/feature").unwrap();
        assert_eq!(open(spec_for(url), tmp.path()).remote_commit().unwrap(), feature.to_string());
    }

    #[test]
    fn missing_and_invalid_refs_are_clear_errors() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = make_repo(tmp.path(), "origin", &[("a.yaml", File(b"a: 1\n"))]);
        let url = format!("file://{}", origin.display());
        let err = open(with_ref(&url, "nope"), tmp.path()).remote_commit().unwrap_err();
        assert!(matches!(err, SourceError::RefNotFound { .. }), "{err}");
        assert_eq!(err.to_string(), format!("reference nope not found in {url}"));

        let err = open(with_ref(&url, "bad..name"), tmp.path()).remote_commit().unwrap_err();
        assert!(matches!(err, SourceError::InvalidReference { .. }), "{err}");

        let err = open(spec_for(&format!("{url}-missing")), tmp.path()).remote_commit().unwrap_err();
        assert!(matches!(err, SourceError::Connect { .. }), "{err}");
        assert!(err.to_string().contains("-missing"), "{err}");
    }

    #[test]
    fn fetch_and_read_via_plain_path_and_file_url() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = make_repo(tmp.path(), "origin", &[("deploy/a.yaml", File(b"a: 1\n")), ("deploy/b.json", File(b"{}"))]);
        let file_url = format!("file://{}", origin.display());
        for (i, url) in [origin.to_str().unwrap(), file_url.as_str()].into_iter().enumerate() {
            let cache = tmp.path().join(format!("cache{i}"));
            let spec = SourceSpec { path: "deploy".into(), ..spec_for(url) };
            let repo = Repo::open(spec, &cache).unwrap();
            let commit = repo.remote_commit().unwrap();
            assert!(matches!(repo.read(&commit, &ReadLimits::default()), Err(SourceError::CommitNotFound { .. })));
            repo.fetch(&commit).unwrap();
            let files = repo.read(&commit, &ReadLimits::default()).unwrap();
            let got: Vec<(&str, &[u8])> = files.iter().map(|f| (f.path.as_str(), f.content.as_slice())).collect();
            assert_eq!(got, vec![("deploy/a.yaml", &b"a: 1\n"[..]), ("deploy/b.json", &b"{}"[..])], "url {url}");
            // Fetched into the private namespace only.
            let cache_repo = Repository::open_bare(repo.cache_path()).unwrap();
            let refs: Vec<String> = cache_repo.references().unwrap().map(|r| r.unwrap().name().unwrap().to_string()).collect();
            assert!(!refs.is_empty() && refs.iter().all(|r| r.starts_with(PRIVATE_NS)), "{refs:?}");
        }
    }

    #[test]
    fn fetching_a_commit_already_cached_is_a_no_op() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = make_repo(tmp.path(), "origin", &[("a.yaml", File(b"a: 1\n"))]);
        let repo = open(spec_for(origin.to_str().unwrap()), tmp.path());
        let commit = repo.remote_commit().unwrap();
        repo.fetch(&commit).unwrap();
        // The remote is gone: a second fetch of the same commit must not need it.
        std::fs::rename(&origin, tmp.path().join("moved")).unwrap();
        repo.fetch(&commit).unwrap();
        assert_eq!(repo.read(&commit, &ReadLimits::default()).unwrap().len(), 1);
        // Whereas a commit that is not cached does.
        let err = repo.fetch(&"1".repeat(40)).unwrap_err();
        assert!(matches!(err, SourceError::Connect { .. }), "{err}");
    }

    #[test]
    fn fetch_follows_a_moving_branch_and_pinned_shas() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = make_repo(tmp.path(), "origin", &[("a.yaml", File(b"v: 1\n"))]);
        let url = origin.to_str().unwrap();
        let repo = open(with_ref(url, "main"), tmp.path());
        let first = repo.remote_commit().unwrap();
        repo.fetch(&first).unwrap();
        let cache = Repository::open_bare(repo.cache_path()).unwrap();
        assert_eq!(cache.refname_to_id(&format!("{PRIVATE_NS}heads/main")).unwrap().to_string(), first);
        let second = commit_on(&origin, "main", &[("a.yaml", File(b"v: 2\n"))]).to_string();
        assert_eq!(repo.remote_commit().unwrap(), second);
        repo.fetch(&second).unwrap();
        assert_eq!(repo.read(&second, &ReadLimits::default()).unwrap()[0].content, b"v: 2\n");
        assert_eq!(repo.read(&first, &ReadLimits::default()).unwrap()[0].content, b"v: 1\n");

        // A commit that is no tip, pinned by SHA, in a fresh cache.
        commit_on(&origin, "main", &[("a.yaml", File(b"v: 3\n"))]);
        let pinned = Repo::open(with_ref(url, &second), &tmp.path().join("cache2")).unwrap();
        assert_eq!(pinned.remote_commit().unwrap(), second);
        pinned.fetch(&second).unwrap();
        assert_eq!(pinned.read(&second, &ReadLimits::default()).unwrap()[0].content, b"v: 2\n");
        // Fetched by its id (the local transport allows it), not through the all-branches fallback.
        let cache = Repository::open_bare(pinned.cache_path()).unwrap();
        assert!(cache.find_reference(&format!("{PRIVATE_NS}commits/{second}")).is_ok());
        assert!(cache.find_reference(&format!("{PRIVATE_NS}heads/main")).is_err());

        // A SHA the remote does not have.
        let missing = "2".repeat(40);
        let pinned = Repo::open(with_ref(url, &missing), &tmp.path().join("cache3")).unwrap();
        let err = pinned.fetch(&missing).unwrap_err();
        assert!(matches!(err, SourceError::CommitNotFound { .. }), "{err}");
        assert!(err.to_string().contains(&missing), "{err}");
    }

    #[test]
    fn fetch_by_annotated_tag() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = make_repo(tmp.path(), "origin", &[("a.yaml", File(b"v: 1\n"))]);
        let head = Repository::open(&origin).unwrap().refname_to_id("HEAD").unwrap();
        annotated_tag(&origin, "v1", head);
        commit_on(&origin, "main", &[("a.yaml", File(b"v: 2\n"))]);
        let repo = open(with_ref(origin.to_str().unwrap(), "v1"), tmp.path());
        let commit = repo.remote_commit().unwrap();
        assert_eq!(commit, head.to_string());
        repo.fetch(&commit).unwrap();
        assert_eq!(repo.read(&commit, &ReadLimits::default()).unwrap()[0].content, b"v: 1\n");
    }

    fn ssh_auth(dir: &std::path::Path, known_hosts: Option<&str>) -> Auth {
        let key_file = dir.join("id_ed25519");
        std::fs::write(&key_file, "not really a key\n").unwrap();
        let known_hosts_file = known_hosts.map(|text| {
            let path = dir.join("known_hosts");
            std::fs::write(&path, text).unwrap();
            path
        });
        Auth::Ssh { key_file, known_hosts_file, passphrase_file: None }
    }

    #[test]
    fn ssh_without_known_hosts_fails_before_connecting() {
        let tmp = tempfile::tempdir().unwrap();
        for url in ["ssh://git@127.0.0.1:1/x.git", "git@127.0.0.1:x.git"] {
            let spec = SourceSpec { auth: ssh_auth(tmp.path(), None), ..spec_for(url) };
            let err = Repo::open(spec.clone(), &tmp.path().join("cache")).unwrap_err();
            assert!(matches!(err, SourceError::KnownHostsRequired { .. }), "{err}");
            assert!(err.to_string().contains("requires a known_hosts file"), "{err}");

            // Also from remote_commit and fetch, for a Repo that skipped `open`'s check.
            let repo = Repo {
                location: Location::parse(url).unwrap(),
                cache: tmp.path().join("unused"),
                spec: SourceSpec { reference: None, ..spec },
            };
            let started = Instant::now();
            let err = repo.remote_commit().unwrap_err();
            assert!(matches!(err, SourceError::KnownHostsRequired { .. }), "{err}");
            let pinned = Repo { spec: SourceSpec { reference: Some("a".repeat(40)), ..repo.spec.clone() }, ..repo };
            let err = pinned.remote_commit().unwrap_err();
            assert!(matches!(err, SourceError::KnownHostsRequired { .. }), "{err}");
            assert!(started.elapsed() < Duration::from_secs(5));
        }
    }

    #[test]
    fn ssh_with_known_hosts_gets_as_far_as_connecting() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = SourceSpec {
            auth: ssh_auth(tmp.path(), Some("[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB\n")),
            ..spec_for("ssh://git:hunter2@127.0.0.1:1/x.git")
        };
        let repo = Repo::open(spec, &tmp.path().join("cache")).unwrap();
        let err = repo.remote_commit().unwrap_err();
        assert!(matches!(err, SourceError::Connect { .. }), "{err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    #[test]
    fn missing_secret_files_are_reported_before_connecting() {
        let tmp = tempfile::tempdir().unwrap();
        let spec = SourceSpec {
            auth: Auth::Basic { username_file: tmp.path().join("user"), password_file: tmp.path().join("pass") },
            ..spec_for("https://127.0.0.1:1/x.git")
        };
        let err = open(spec, tmp.path()).remote_commit().unwrap_err();
        assert!(matches!(err, SourceError::Credentials { what: "username", .. }), "{err}");
        assert!(err.to_string().contains(&tmp.path().join("user").display().to_string()), "{err}");

        std::fs::write(tmp.path().join("token"), "\n").unwrap();
        let spec = SourceSpec {
            auth: Auth::Token { token_file: tmp.path().join("token"), username: None },
            ..spec_for("https://127.0.0.1:1/x.git")
        };
        let err = open(spec, tmp.path()).remote_commit().unwrap_err();
        assert!(err.to_string().contains("empty"), "{err}");
    }

    /// A loopback HTTP server that answers every request with 401 and records the
    /// `Authorization` headers it was sent. Stops after `max` connections or 20 seconds.
    fn unauthorized_server(max: usize) -> (String, Arc<Mutex<Vec<String>>>, std::thread::JoinHandle<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let record = Arc::clone(&seen);
        let handle = std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(20);
            let mut served = 0;
            while served < max && Instant::now() < deadline {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                served += 1;
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                for line in text.lines() {
                    if let Some((name, value)) = line.split_once(':') {
                        if name.eq_ignore_ascii_case("authorization") {
                            record.lock().unwrap().push(value.trim().to_string());
                        }
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                );
            }
        });
        (format!("http://127.0.0.1:{port}/org/repo.git"), seen, handle)
    }

    #[test]
    fn basic_credentials_are_sent_once_and_never_leaked() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("user"), "alice\n").unwrap();
        std::fs::write(tmp.path().join("pass"), "s3cr3t-pass\r\n").unwrap();
        let (url, seen, server) = unauthorized_server(4);
        let spec = SourceSpec {
            auth: Auth::Basic { username_file: tmp.path().join("user"), password_file: tmp.path().join("pass") },
            insecure_http: true,
            ..spec_for(&url)
        };
        let err = open(spec, tmp.path()).remote_commit().unwrap_err();
        assert!(matches!(err, SourceError::Auth { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("rejected") && msg.contains(&url), "{msg}");
        assert!(!msg.contains("s3cr3t") && !msg.contains("alice"), "{msg}");
        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("alice:s3cr3t-pass"));
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, vec![want], "credentials are sent exactly once");
        drop(server);
    }

    #[test]
    fn token_uses_git_as_default_username_and_urls_are_redacted() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("token"), "tok-123\n").unwrap();
        let (url, seen, _server) = unauthorized_server(4);
        let url_with_secret = url.replace("http://", "http://bob:hunter2@");
        let spec = SourceSpec {
            auth: Auth::Token { token_file: tmp.path().join("token"), username: None },
            insecure_http: true,
            ..spec_for(&url_with_secret)
        };
        let err = open(spec, tmp.path()).remote_commit().unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, SourceError::Auth { .. }), "{msg}");
        assert!(!msg.contains("hunter2") && !msg.contains("bob") && !msg.contains("tok-123"), "{msg}");
        assert!(msg.contains(&url), "{msg}");
        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("git:tok-123"));
        assert!(seen.lock().unwrap().contains(&want), "{:?}", seen.lock().unwrap());
    }

    #[test]
    fn a_remote_requiring_auth_without_credentials_is_an_auth_error() {
        let tmp = tempfile::tempdir().unwrap();
        let (url, seen, _server) = unauthorized_server(2);
        let err = open(spec_for(&url), tmp.path()).remote_commit().unwrap_err();
        assert!(matches!(err, SourceError::Auth { .. }), "{err}");
        assert!(err.to_string().contains("has none"), "{err}");
        assert!(seen.lock().unwrap().is_empty());
    }

    /// A spec for `url` with a short fetch timeout.
    fn with_timeout(url: &str, timeout: Duration) -> SourceSpec {
        SourceSpec { timeout, ..spec_for(url) }
    }

    /// The error of `f` and how long it took.
    fn timed<T: std::fmt::Debug>(f: impl FnOnce() -> Result<T, SourceError>) -> (SourceError, Duration) {
        let started = Instant::now();
        let err = f().unwrap_err();
        (err, started.elapsed())
    }

    #[test]
    fn a_remote_that_accepts_and_never_answers_fails_within_the_timeout() {
        let tmp = tempfile::tempdir().unwrap();
        let hung = TestServer::start("127.0.0.1", |_| Answer::Hang);
        let timeout = Duration::from_secs(2);
        let slack = Duration::from_secs(2);
        let url = hung.url("/org/repo.git");
        let repo = open(with_timeout(&url, timeout), tmp.path());
        let (err, took) = timed(|| repo.remote_commit());
        eprintln!("hung http remote check failed after {took:?}: {err}");
        assert!(matches!(err, SourceError::Timeout { .. }), "{err}");
        assert!(err.to_string().contains("within the fetch timeout of 2s"), "{err}");
        assert!(took < timeout + slack, "took {took:?}");
        // A fetch lists the refs first: the same bound.
        let (err, took) = timed(|| repo.fetch(&"3".repeat(40)));
        eprintln!("hung http fetch failed after {took:?}: {err}");
        assert!(matches!(err, SourceError::Timeout { .. }), "{err}");
        assert!(took < timeout + slack, "took {took:?}");

        // ssh: the server never sends its banner.
        let url = format!("ssh://git@127.0.0.1:{}/x.git", hung.addr.port());
        let known_hosts = format!("[127.0.0.1]:{} ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB\n", hung.addr.port());
        let spec = SourceSpec { auth: ssh_auth(tmp.path(), Some(&known_hosts)), ..with_timeout(&url, timeout) };
        let repo = Repo::open(spec, &tmp.path().join("cache-ssh")).unwrap();
        let (err, took) = timed(|| repo.remote_commit());
        eprintln!("hung ssh remote check failed after {took:?}: {err}");
        assert!(matches!(err, SourceError::Timeout { .. }), "{err}");
        assert!(took < timeout + slack, "took {took:?}");
        assert!(hung.received().len() >= 2, "{:?}", hung.received());
    }

    /// An origin with one file of `size` incompressible bytes, served over loopback HTTP
    /// (`answer` turns the backend's answer into what the server does).
    fn served_origin(
        dir: &std::path::Path,
        size: usize,
        answer: impl Fn(&Received, Vec<u8>) -> Answer + Send + 'static,
    ) -> (std::path::PathBuf, TestServer) {
        let blob = noise(size, size as u64);
        let origin = make_repo(dir, "origin", &[("big.bin", File(&blob)), ("a.yaml", File(b"a: 1\n"))]);
        let served = origin.clone();
        let server = TestServer::start("127.0.0.1", move |request| answer(request, git_backend(&served, request)));
        (origin, server)
    }

    #[test]
    fn a_transfer_still_running_at_the_deadline_is_stopped() {
        let tmp = tempfile::tempdir().unwrap();
        // the pack comes at about 640 KiB/s: 4 MiB would take over 6 s
        let (_origin, server) = served_origin(tmp.path(), 4 << 20, |request, bytes| {
            if request.method == "POST" {
                Answer::Trickle { bytes, chunk: 64 << 10, pause: Duration::from_millis(100) }
            } else {
                Answer::Send(bytes)
            }
        });
        let timeout = Duration::from_secs(2);
        let repo = open(with_timeout(&server.url(REPO_PATH), timeout), tmp.path());
        let commit = repo.remote_commit().unwrap();
        let (err, took) = timed(|| repo.fetch(&commit));
        eprintln!("trickled fetch failed after {took:?}: {err}");
        assert!(matches!(err, SourceError::Timeout { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("within the fetch timeout of 2s (stopped after "), "{msg}");
        assert!(took < timeout + Duration::from_secs(1), "took {took:?}");
        assert!(repo.read(&commit, &ReadLimits::default()).is_err(), "the commit must not be in the cache");
    }

    #[test]
    fn a_fetch_over_the_byte_limit_fails_naming_the_limit() {
        let tmp = tempfile::tempdir().unwrap();
        let (origin, server) = served_origin(tmp.path(), 1 << 20, |_, bytes| Answer::Send(bytes));
        let limit = 256 << 10;
        let spec = SourceSpec { max_fetch_bytes: limit, ..spec_for(&server.url(REPO_PATH)) };
        let repo = open(spec.clone(), tmp.path());
        let commit = repo.remote_commit().unwrap();
        let err = repo.fetch(&commit).unwrap_err();
        assert!(matches!(err, SourceError::FetchTooLarge { limit: 262144, .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("over the fetch size limit of 262144 bytes (maxFetchBytes)"), "{msg}");
        assert!(repo.read(&commit, &ReadLimits::default()).is_err(), "the commit must not be in the cache");
        // and the part that was downloaded is not kept
        let pack_dir = repo.cache_path().join("objects/pack");
        let kept: u64 = std::fs::read_dir(&pack_dir).unwrap().map(|e| e.unwrap().metadata().unwrap().len()).sum();
        assert_eq!(kept, 0, "{:?}", std::fs::read_dir(&pack_dir).unwrap().collect::<Vec<_>>());
        // one try only: the limit is final, not a reason to try a full fetch after the shallow
        // one (ref listings: the remote check, the fetch's own, its one attempt)
        let listings = server.received().iter().filter(|r| r.method == "GET").count();
        assert_eq!(listings, 3, "{:?}", server.received());
        assert!(server.received().iter().all(|r| r.method == "GET" || r.body.windows(6).any(|w| w == b"deepen")));

        // The same over the local transport.
        let local_spec = SourceSpec { url: origin.display().to_string(), ..spec.clone() };
        let local = Repo::open(local_spec, &tmp.path().join("c2")).unwrap();
        let err = local.fetch(&commit).unwrap_err();
        assert!(matches!(err, SourceError::FetchTooLarge { .. }), "{err}");

        // Under the limit, it fetches.
        let roomy = Repo::open(SourceSpec { max_fetch_bytes: 4 << 20, ..spec }, &tmp.path().join("c3")).unwrap();
        roomy.fetch(&commit).unwrap();
        assert_eq!(roomy.read(&commit, &ReadLimits::default()).unwrap().len(), 1);
    }

    /// A server on `ip` that answers 401 (Basic) to everything.
    fn asks_for_credentials(ip: &str) -> TestServer {
        TestServer::start(ip, |_| Answer::Send(http_response("401 Unauthorized", &["WWW-Authenticate: Basic realm=\"test\""], b"")))
    }

    /// A server on 127.0.0.1 that redirects (302) every request to the same path on `to`;
    /// with `after_auth`, only once it was sent credentials (401 before).
    fn redirects_to(to: &TestServer, after_auth: bool) -> TestServer {
        let to = to.url("");
        TestServer::start("127.0.0.1", move |request| {
            if after_auth && request.header("authorization").is_none() {
                return Answer::Send(http_response("401 Unauthorized", &["WWW-Authenticate: Basic realm=\"test\""], b""));
            }
            let location = format!("Location: {to}{}", request.target);
            Answer::Send(http_response("302 Found", &[&location], b""))
        })
    }

    #[test]
    fn credentials_do_not_follow_a_redirect_to_another_host() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("token"), "tok-123\n").unwrap();
        let auth = Auth::Token { token_file: tmp.path().join("token"), username: None };
        let spec = |url: &str| SourceSpec { auth: auth.clone(), insecure_http: true, ..spec_for(url) };

        let want = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("git:tok-123"));
        for (i, after_auth) in [false, true].into_iter().enumerate() {
            let elsewhere = asks_for_credentials("127.0.0.2");
            let origin = redirects_to(&elsewhere, after_auth);
            let dir = tmp.path().join(format!("r{i}"));
            let err = open(spec(&origin.url("/org/repo.git")), &dir).remote_commit().unwrap_err();
            assert!(matches!(err, SourceError::Auth { .. }), "{err}");
            let msg = err.to_string();
            assert!(msg.contains("redirected to another host (127.0.0.2)") && !msg.contains("tok-123"), "{msg}");
            let asked = elsewhere.received();
            assert!(!asked.is_empty(), "the redirect was not followed");
            // not even the credentials the configured host was already given
            assert!(asked.iter().all(|r| r.header("authorization").is_none()), "{asked:?}");
            let sent_to_origin = origin.received().iter().any(|r| r.header("authorization") == Some(want.as_str()));
            assert_eq!(sent_to_origin, after_auth);
        }

        // Another port of the same host is the same host: it gets them.
        let same_host = asks_for_credentials("127.0.0.1");
        let origin = redirects_to(&same_host, false);
        let err = open(spec(&origin.url("/org/repo.git")), tmp.path().join("2").as_path()).remote_commit().unwrap_err();
        assert!(err.to_string().contains("rejected the configured credentials"), "{err}");
        assert!(same_host.received().iter().any(|r| r.header("authorization") == Some(want.as_str())));
    }

    #[test]
    fn credentials_over_plain_http_are_refused_unless_insecure_http() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("token"), "tok\n").unwrap();
        let token = Auth::Token { token_file: tmp.path().join("token"), username: None };
        let basic = Auth::Basic { username_file: tmp.path().join("u"), password_file: tmp.path().join("p") };
        let cases = [
            ("http://127.0.0.1:1/x.git", token.clone(), Some("a token")),
            ("HTTP://127.0.0.1:1/x.git", basic.clone(), Some("a username and password")),
            ("http://bob:hunter2@127.0.0.1:1/x.git", Auth::None, Some("a password in the URL")),
            ("http://bob@127.0.0.1:1/x.git", Auth::None, None),
            ("http://127.0.0.1:1/x.git", Auth::None, None),
            ("https://127.0.0.1:1/x.git", token.clone(), None),
            ("https://bob:hunter2@127.0.0.1:1/x.git", basic, None),
            ("git://127.0.0.1:1/x.git", token, None),
        ];
        for (i, (url, auth, refused)) in cases.into_iter().enumerate() {
            let spec = SourceSpec { auth, ..spec_for(url) };
            let cache = tmp.path().join(format!("c{i}"));
            match refused {
                Some(what) => {
                    let err = Repo::open(spec.clone(), &cache).unwrap_err();
                    assert!(matches!(err, SourceError::InsecureHttp { .. }), "{url}: {err}");
                    let msg = err.to_string();
                    assert!(msg.contains(what) && msg.contains("insecureHttp: true"), "{msg}");
                    assert!(!msg.contains("hunter2"), "{msg}");
                    assert!(spec.check_plain_http().is_err());
                    let allowed = SourceSpec { insecure_http: true, ..spec };
                    assert!(allowed.check_plain_http().is_ok());
                    Repo::open(allowed, &cache).unwrap();
                }
                None => {
                    assert!(spec.check_plain_http().is_ok(), "{url}");
                    Repo::open(spec, &cache).unwrap();
                }
            }
        }
    }
}
