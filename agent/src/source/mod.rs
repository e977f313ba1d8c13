//! Source: a git repository read with git2. Check the remote ref, fetch only when the commit
//! changed (shallow where the server allows), read manifests straight from the commit's tree in
//! the object database: no checkout directory.
//!
//! One [`Repo`] is one source. It owns a bare repository used as a cache, in the directory it is
//! given (the agent gives each source its own, named after the source) and named there by the
//! sha256 of the (normalized) URL, so a source whose URL changes starts a fresh cache. A
//! reconcile does three blocking steps, which [`check_and_fetch`] runs under
//! `tokio::task::spawn_blocking`:
//!
//! 1. [`Repo::remote_commit`] connects to the remote, lists its refs and resolves the configured
//!    reference to a commit id, without downloading anything;
//! 2. [`Repo::fetch`] downloads that commit into the cache unless it is already there, into a
//!    private ref namespace (`refs/driftless/...`), shallow where the transport allows;
//! 3. [`Repo::read`] walks the commit's tree under the source path and returns the files the
//!    [`Selector`] wants, with size limits, symlink containment and
//!    submodules skipped.
//!
//! Credentials are read from files when connecting and are never put in URLs, logs or errors.
//! SSH sources must have a known_hosts file; host keys are checked against it by
//! [`KnownHosts`], and an unknown or changed key refuses the connection. Credentials go only to
//! the host of the configured URL (a redirect to another host gets none), and not over plain
//! `http://` unless the source sets [`SourceSpec::insecure_http`].
//!
//! Network I/O is bounded: each remote check and each fetch must finish within the source's
//! [`SourceSpec::timeout`] (checked on every progress callback and between fetch attempts, and
//! libgit2's connect and socket read/write waits, infinite by default, are bounded by it too), and
//! a fetch stops once it has downloaded more than [`SourceSpec::max_fetch_bytes`].

mod known_hosts;
mod location;
mod remote;
pub mod select;
mod tree;

#[cfg(test)]
mod testutil;

use std::path::{Path, PathBuf};
use std::time::Duration;

use git2::{Oid, Repository};
use sha2::{Digest, Sha256};

use crate::manifest::SourceFile;

pub use known_hosts::{HostKeyStatus, KnownHosts};
use location::Location;
pub use select::{Selector, IGNORE_FILE};
pub use tree::KUSTOMIZATION_FILES;

/// Limits on reading a commit's tree: the selected files' sizes, one by one and in total.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadLimits {
    /// Largest single file, in bytes.
    pub max_file_bytes: u64,
    /// Largest sum of all selected files, in bytes.
    pub max_total_bytes: u64,
}

impl Default for ReadLimits {
    fn default() -> Self {
        ReadLimits { max_file_bytes: 4 << 20, max_total_bytes: 64 << 20 }
    }
}

/// The default of [`SourceSpec::timeout`].
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(60);

/// The default of [`SourceSpec::max_fetch_bytes`]: 256 MiB.
pub const DEFAULT_MAX_FETCH_BYTES: u64 = 256 << 20;

/// How to authenticate to the remote. Secrets are always read from files, never from flags.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Auth {
    /// No credentials (public HTTPS, local paths).
    #[default]
    None,
    /// HTTPS basic credentials.
    Basic { username_file: PathBuf, password_file: PathBuf },
    /// HTTPS bearer-style token, sent as the password of `username` (default `git`).
    Token { token_file: PathBuf, username: Option<String> },
    /// SSH key; `known_hosts_file` is mandatory for ssh URLs.
    Ssh { key_file: PathBuf, known_hosts_file: Option<PathBuf>, passphrase_file: Option<PathBuf> },
}

impl Auth {
    /// The known_hosts file, when the auth carries one.
    pub fn known_hosts_file(&self) -> Option<&Path> {
        match self {
            Auth::Ssh { known_hosts_file, .. } => known_hosts_file.as_deref(),
            _ => None,
        }
    }
}

/// What to read: a repository URL (https://, ssh://, scp-like, file:// or a local path), a ref
/// (branch, tag or full commit SHA; `None` is the remote's HEAD) and a path inside it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceSpec {
    /// Where the repository is. May not carry credentials in practice, but if it does they are
    /// redacted everywhere this module reports it.
    pub url: String,
    /// A branch, a tag, a fully qualified `refs/...` name or a full 40-hex commit id. `None` (or
    /// empty) means the remote's HEAD. A bare name is looked up as a branch first, then a tag.
    pub reference: Option<String>,
    /// The directory inside the repository to read (`""` or `"."` is the root).
    pub path: String,
    /// How to authenticate.
    pub auth: Auth,
    /// Longest one remote check ([`Repo::remote_commit`]) or one fetch ([`Repo::fetch`]) may
    /// take. libgit2's connect and socket read/write timeouts are process-wide: they are set to
    /// the smallest `timeout` of the sources seen so far, so a remote that accepts the connection
    /// and never answers fails within it.
    pub timeout: Duration,
    /// Most bytes one fetch may download (over all its attempts).
    pub max_fetch_bytes: u64,
    /// Permit credentials (a token, a username and password, a password in the URL) over plain
    /// `http://`, where they travel unencrypted. Refused otherwise.
    pub insecure_http: bool,
}

impl SourceSpec {
    /// Refuses credentials over plain `http://` unless [`SourceSpec::insecure_http`] is set.
    /// Looks only at the URL's scheme and user info, so it can run when the config is read
    /// (a URL that does not parse is reported when the source is opened).
    pub fn check_plain_http(&self) -> Result<(), SourceError> {
        match location::plain_http_credentials(&self.url, &self.auth) {
            Some(what) if !self.insecure_http => Err(SourceError::InsecureHttp { url: redact_url(&self.url), what: what.to_string() }),
            _ => Ok(()),
        }
    }
}

/// Why the source could not produce a revision. Messages never contain credentials: URLs are
/// always shown through [`redact_url`] and messages from libgit2 are scrubbed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Writing the commit out for a renderer failed.
    #[error("writing {path} out for the renderer: {reason}")]
    Checkout { path: String, reason: String },
    /// The blocking git work stopped before it answered (it panicked or was cancelled).
    #[error("the git worker stopped: {0}")]
    Worker(String),
    /// The URL is not one this module can fetch from.
    #[error("invalid source URL {url}: {reason}")]
    InvalidUrl { url: String, reason: String },
    /// An ssh source without a known_hosts file; refused before any connection.
    #[error("ssh source {url} requires a known_hosts file (set the ssh auth's known_hosts file)")]
    KnownHostsRequired { url: String },
    /// The known_hosts file could not be read.
    #[error("cannot read known_hosts file {path}: {reason}")]
    KnownHostsFile { path: String, reason: String },
    /// The server's host key is not listed for this host.
    #[error("host key for {host} is not in known_hosts{detail}")]
    HostKeyUnknown { host: String, detail: String },
    /// The server's host key differs from the one listed for this host.
    #[error("host key for {host} does not match known_hosts (possible man-in-the-middle)")]
    HostKeyMismatch { host: String },
    /// The server's host key is marked `@revoked`.
    #[error("host key for {host} is revoked in known_hosts")]
    HostKeyRevoked { host: String },
    /// A secret file (password, token, key, passphrase) could not be read.
    #[error("cannot read {what} file {path}: {reason}")]
    Credentials { what: &'static str, path: String, reason: String },
    /// The remote refused the credentials, or asked for some the source does not have.
    #[error("authentication to {url} failed: {reason}")]
    Auth { url: String, reason: String },
    /// Connecting to the remote or listing its refs failed.
    #[error("cannot connect to {url}: {reason}")]
    Connect { url: String, reason: String },
    /// The reference is not a valid git reference name.
    #[error("invalid reference {reference:?} for {url}")]
    InvalidReference { reference: String, url: String },
    /// The remote has no such reference.
    #[error("reference {reference} not found in {url}")]
    RefNotFound { reference: String, url: String },
    /// Fetching failed.
    #[error("fetching commit {commit} from {url} failed: {reason}")]
    Fetch { url: String, commit: String, reason: String },
    /// The remote check or the fetch did not finish within [`SourceSpec::timeout`].
    #[error("no complete answer from {url} within the fetch timeout of {timeout}{detail}")]
    Timeout { url: String, timeout: String, detail: String },
    /// The fetch downloaded more than [`SourceSpec::max_fetch_bytes`].
    #[error("fetching from {url} was stopped after {received} bytes: over the fetch size limit of {limit} bytes (maxFetchBytes)")]
    FetchTooLarge { url: String, received: u64, limit: u64 },
    /// Credentials over plain `http://` without [`SourceSpec::insecure_http`].
    #[error("refusing to send {what} over plain http to {url}: use https, or set insecureHttp: true on the source")]
    InsecureHttp { url: String, what: String },
    /// The commit is not available (after fetching, or when reading).
    #[error("commit {commit} not found in {url}{detail}")]
    CommitNotFound { commit: String, url: String, detail: String },
    /// The string is not a commit id.
    #[error("invalid commit id {0:?}")]
    InvalidCommit(String),
    /// The source path does not exist in the commit.
    #[error("path {path:?} does not exist in commit {commit}")]
    PathNotFound { path: String, commit: String },
    /// The source path is not a directory in the commit.
    #[error("path {path:?} is not a directory in commit {commit}")]
    NotADirectory { path: String, commit: String },
    /// The source path is malformed (for example it contains `..`).
    #[error("invalid source path {path:?}: {reason}")]
    InvalidPath { path: String, reason: String },
    /// A symlink points outside the source path, or to an absolute path.
    #[error("symlink {link} points to {target:?}, outside the source path")]
    SymlinkEscape { link: String, target: String },
    /// A symlink cannot be followed (dangling, to a directory, a loop...).
    #[error("symlink {link} -> {target:?}: {reason}")]
    Symlink { link: String, target: String, reason: String },
    /// One file is over [`ReadLimits::max_file_bytes`].
    #[error("file {file} is {size} bytes, over the limit of {limit} bytes per file")]
    FileTooLarge { file: String, size: u64, limit: u64 },
    /// The selected files together are over [`ReadLimits::max_total_bytes`].
    #[error("reading {file} brings the revision to {total} bytes, over the limit of {limit} bytes")]
    TotalTooLarge { file: String, total: u64, limit: u64 },
    /// `.driftlessignore` could not be used.
    #[error("invalid {file}: {reason}")]
    Ignore { file: String, reason: String },
    /// The local cache repository could not be created or opened.
    #[error("git cache {path}: {reason}")]
    Cache { path: String, reason: String },
    /// Reading an object from the cache failed.
    #[error("reading {what} at commit {commit}: {reason}")]
    Object { what: String, commit: String, reason: String },
}

/// A bare repository cache for one source. Holds no open libgit2 handle between calls, so it
/// is `Send + Sync` and can be moved into `spawn_blocking`.
#[derive(Debug)]
pub struct Repo {
    spec: SourceSpec,
    location: Location,
    cache: PathBuf,
}

/// How a source path's files become objects.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RenderMode {
    /// A kustomization at the source path is built with kustomize, a `Chart.yaml` rendered
    /// with helm (a kustomization wins when there are both); otherwise plain files.
    #[default]
    Auto,
    /// The YAML and JSON files under the path, as they are.
    Plain,
    /// `kustomize build` of the source path.
    Kustomize,
    /// `helm template` of the chart at the source path.
    Helm,
}

impl std::str::FromStr for RenderMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(RenderMode::Auto),
            "plain" => Ok(RenderMode::Plain),
            "kustomize" => Ok(RenderMode::Kustomize),
            "helm" => Ok(RenderMode::Helm),
            other => Err(format!("unknown render mode {other:?} (auto, plain, kustomize or helm)")),
        }
    }
}

/// A commit as the render stage takes it.
#[derive(Debug)]
pub enum Revision {
    /// The manifest files under the source path, sorted by path.
    Files(Vec<SourceFile>),
    /// The commit written out as files, for `kustomize build` of the source path.
    Kustomization(Checkout),
    /// The commit written out as files, for `helm template` of the chart at the source path.
    Chart(Checkout),
}

/// A commit written out as files in a private temporary directory, read-only once sealed, for a
/// renderer that reads files (kustomize, helm): removed when dropped.
#[derive(Debug)]
pub struct Checkout {
    dir: Option<tempfile::TempDir>,
    /// The source path, relative to the root.
    pub path: String,
}

impl Checkout {
    fn new(path: String) -> Result<Self, SourceError> {
        let dir = tempfile::Builder::new()
            .prefix("driftless-render-")
            .tempdir()
            .map_err(|e| SourceError::Checkout { path: path.clone(), reason: e.to_string() })?;
        Ok(Checkout { dir: Some(dir), path })
    }

    /// The repository's root directory.
    pub fn root(&self) -> &Path {
        self.dir.as_ref().map_or(Path::new("/nonexistent"), |d| d.path())
    }

    /// The source path's directory.
    pub fn source_dir(&self) -> PathBuf {
        if self.path.is_empty() {
            self.root().to_path_buf()
        } else {
            self.root().join(&self.path)
        }
    }

    /// Makes every file and directory read-only.
    fn seal(&self) -> Result<(), SourceError> {
        set_modes(self.root(), 0o444, 0o555).map_err(|e| SourceError::Checkout { path: self.path.clone(), reason: e.to_string() })
    }

    /// Makes the source path's directory, and everything under it, writable again (for a tool
    /// that must write there: `helm dependency build` fills a chart's `charts/`).
    pub fn unseal_source_dir(&self) -> std::io::Result<()> {
        set_modes(&self.source_dir(), 0o644, 0o755)
    }
}

impl Drop for Checkout {
    fn drop(&mut self) {
        // directories must be writable again for their entries to be removed
        let _ = set_modes(self.root(), 0o644, 0o755);
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
    }
}

/// Sets the permission bits of every file and directory under `root` (and of `root`).
fn set_modes(root: &Path, file: u32, dir: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = vec![root.to_path_buf()];
    let mut all_dirs = Vec::new();
    while let Some(d) = dirs.pop() {
        // a directory must be writable and searchable while it is walked and changed
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755))?;
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let kind = entry.file_type()?;
            if kind.is_dir() {
                dirs.push(entry.path());
            } else if kind.is_file() {
                std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(file))?;
            }
        }
        all_dirs.push(d);
    }
    // deepest first, so a parent is changed last
    for d in all_dirs.iter().rev() {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(dir))?;
    }
    Ok(())
}

/// What a remote check found.
#[derive(Debug)]
pub enum Fetched {
    /// The ref still names the commit already applied.
    Unchanged(String),
    /// A new commit, fetched, read as the render stage takes it.
    New { commit: String, revision: Revision },
}

/// Asks the remote which commit the source's ref names and, unless it is `applied`, fetches it
/// into the cache under `cache` and reads its files, all of it blocking git work run off the
/// async worker threads. Holds nothing of its caller, so the agent runs it beside its loop: a
/// slow remote never holds up drift correction.
pub async fn check_and_fetch(
    spec: SourceSpec,
    cache: PathBuf,
    applied: Option<String>,
    limits: ReadLimits,
    mode: RenderMode,
) -> Result<Fetched, SourceError> {
    let joined = tokio::task::spawn_blocking(move || {
        let repo = Repo::open(spec, &cache)?;
        let commit = repo.remote_commit()?;
        if applied.as_deref() == Some(commit.as_str()) {
            return Ok(Fetched::Unchanged(commit));
        }
        repo.fetch(&commit)?;
        let revision = repo.read_revision(&commit, &limits, mode)?;
        Ok(Fetched::New { commit, revision })
    })
    .await;
    joined.unwrap_or_else(|e| Err(SourceError::Worker(e.to_string())))
}

/// The first 12 characters of a commit, as reports and logs name it.
pub fn short(commit: &str) -> &str {
    commit.get(..12).unwrap_or(commit)
}

impl Repo {
    /// Prepares the source: checks the URL (an ssh URL without a known_hosts file is refused
    /// here, before any network access) and creates the bare cache repository under
    /// `cache_dir` if it is missing. Does not connect to the remote.
    pub fn open(spec: SourceSpec, cache_dir: &Path) -> Result<Self, SourceError> {
        let location = Location::parse(&spec.url)?;
        location.check_auth(&spec)?;
        let cache = cache_dir.join(cache_name(&location));
        init_cache(&cache)?;
        Ok(Self { spec, location, cache })
    }

    /// The source this repository reads.
    pub fn spec(&self) -> &SourceSpec {
        &self.spec
    }

    /// The bare cache repository's directory.
    pub fn cache_path(&self) -> &Path {
        &self.cache
    }

    /// Asks the remote which commit the ref points at, without fetching. Returns the full
    /// 40-hex commit id. A full commit id as the reference is returned as is, without
    /// connecting.
    pub fn remote_commit(&self) -> Result<String, SourceError> {
        remote::remote_commit(self)
    }

    /// Makes the commit available locally, fetching (shallow where allowed) when it is missing.
    /// A commit already in the cache is a no-op without any network access.
    pub fn fetch(&self, commit: &str) -> Result<(), SourceError> {
        remote::fetch(self, commit)
    }

    /// Reads the manifest files under the source path at `commit`, sorted by path.
    pub fn read(&self, commit: &str, limits: &ReadLimits) -> Result<Vec<SourceFile>, SourceError> {
        tree::read(self, commit, limits)
    }

    /// Reads `commit` as the render stage takes it: the manifest files under the source path, or,
    /// for a kustomization or a chart (`mode`, or [`RenderMode::Auto`] and a kustomization file or
    /// `Chart.yaml` at the source path), the whole commit written out as files.
    pub fn read_revision(&self, commit: &str, limits: &ReadLimits, mode: RenderMode) -> Result<Revision, SourceError> {
        tree::read_revision(self, commit, limits, mode)
    }

    /// The URL as shown in logs and errors.
    fn display_url(&self) -> String {
        redact_url(&self.spec.url)
    }

    /// Opens the cache repository (cheap; done per call so that `Repo` holds no handle).
    fn git(&self) -> Result<Repository, SourceError> {
        Repository::open_bare(&self.cache)
            .map_err(|e| SourceError::Cache { path: self.cache.display().to_string(), reason: e.message().to_string() })
    }
}

/// Parses a full commit id.
fn parse_commit(commit: &str) -> Result<Oid, SourceError> {
    let commit = commit.trim();
    if !location::is_full_sha(commit) {
        return Err(SourceError::InvalidCommit(commit.to_string()));
    }
    Oid::from_str(commit).map_err(|_| SourceError::InvalidCommit(commit.to_string()))
}

/// The cache directory's name: sha256 of the normalized fetch URL.
fn cache_name(location: &Location) -> String {
    let digest = Sha256::digest(location.fetch_url().as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("{hex}.git")
}

/// Creates the bare repository if missing; a directory that is not a usable repository is
/// replaced (it is only a cache).
fn init_cache(path: &Path) -> Result<(), SourceError> {
    let err = |reason: String| SourceError::Cache { path: path.display().to_string(), reason };
    if path.exists() {
        match Repository::open_bare(path) {
            Ok(_) => return Ok(()),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e.message(), "git cache is unusable, recreating it");
                std::fs::remove_dir_all(path).map_err(|e| err(e.to_string()))?;
            }
        }
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| err(e.to_string()))?;
    }
    Repository::init_bare(path).map_err(|e| err(e.message().to_string()))?;
    Ok(())
}

/// The URL with any user info (credentials) removed, for logs and status.
///
/// * `scheme://user:password@host/path` and `scheme://token@host/path` become
///   `scheme://host/path`;
/// * for ssh URLs a plain user name is kept (`ssh://git@host/x`), a password is not;
/// * scp-like `git@host:path` is kept, `user:password@host:path` becomes `user@host:path`;
/// * local paths are unchanged.
pub fn redact_url(url: &str) -> String {
    if let Some(idx) = url.find("://") {
        let scheme = &url[..idx];
        let rest = &url[idx + 3..];
        let Some(at) = userinfo_end(rest) else {
            return url.to_string();
        };
        let userinfo = &rest[..at];
        let host_and_path = &rest[at + 1..];
        let keep_user =
            location::is_ssh_scheme(scheme).then(|| userinfo.split(':').next().unwrap_or_default()).filter(|user| !user.is_empty());
        return match keep_user {
            Some(user) => format!("{scheme}://{user}@{host_and_path}"),
            None => format!("{scheme}://{host_and_path}"),
        };
    }
    // scp-like: `[user[:password]@]host:path`, with no `/` before the `@`.
    let head_end = url.find('/').unwrap_or(url.len());
    match url[..head_end].rfind('@') {
        Some(at) if url[at..].contains(':') => {
            let user = url[..at].split(':').next().unwrap_or_default();
            if user.is_empty() {
                url[at + 1..].to_string()
            } else {
                format!("{user}@{}", &url[at + 1..])
            }
        }
        _ => url.to_string(),
    }
}

/// Where the user info of `authority-and-path` (the part after `scheme://`) ends: the index of
/// its `@`, if it has user info. Errs on the side of redacting when a password holds a `/`.
fn userinfo_end(rest: &str) -> Option<usize> {
    let query = rest.find(['?', '#']).unwrap_or(rest.len());
    let rest = &rest[..query];
    let first_slash = rest.find('/').unwrap_or(rest.len());
    let head = &rest[..first_slash];
    if let Some(at) = head.rfind('@') {
        return Some(at);
    }
    // `user:pa/ss@host/...`: a ':' not followed by a port number means user info goes on
    // past the '/'.
    if let Some((_, after_colon)) = head.split_once(':') {
        if !head.starts_with('[') && !after_colon.bytes().all(|b| b.is_ascii_digit()) {
            return rest.rfind('@');
        }
    }
    None
}

/// Removes credentials from any URL-like word of a message (libgit2 messages may echo URLs).
fn scrub(message: &str) -> String {
    let is_delim = |c: char| c.is_whitespace() || matches!(c, '\'' | '"' | '`' | '<' | '>' | '(' | ')');
    let mut out = String::with_capacity(message.len());
    let mut word = String::new();
    for c in message.chars() {
        if is_delim(c) {
            flush_word(&mut out, &mut word);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush_word(&mut out, &mut word);
    out
}

fn flush_word(out: &mut String, word: &mut String) {
    if word.contains('@') {
        out.push_str(&redact_url(word));
    } else {
        out.push_str(word);
    }
    word.clear();
}

#[cfg(test)]
mod tests {
    use super::testutil::*;
    use super::*;

    #[test]
    fn repo_is_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Repo>();
        assert_send_sync::<SourceError>();
    }

    #[test]
    fn redact_url_cases() {
        let cases = [
            ("https://user:secret@example.com/org/repo.git", "https://example.com/org/repo.git"),
            ("https://tok3n@example.com/org/repo.git", "https://example.com/org/repo.git"),
            ("http://u:p@127.0.0.1:8080/r.git?x=1", "http://127.0.0.1:8080/r.git?x=1"),
            ("https://u:pa/ss@example.com/r.git", "https://example.com/r.git"),
            ("https://example.com/org/repo.git", "https://example.com/org/repo.git"),
            ("https://example.com:8443/org/r@v1", "https://example.com:8443/org/r@v1"),
            ("ssh://git@example.com:2222/org/repo.git", "ssh://git@example.com:2222/org/repo.git"),
            ("ssh://git:secret@example.com/org/repo.git", "ssh://git@example.com/org/repo.git"),
            ("ssh://:secret@example.com/r.git", "ssh://example.com/r.git"),
            ("git@github.com:org/repo.git", "git@github.com:org/repo.git"),
            ("me:secret@github.com:org/repo.git", "me@github.com:org/repo.git"),
            ("file:///srv/git/repo.git", "file:///srv/git/repo.git"),
            ("/srv/git/repo", "/srv/git/repo"),
            ("./relative/repo", "./relative/repo"),
            ("/srv/a@b/repo", "/srv/a@b/repo"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_url(input), want, "redact_url({input:?})");
        }
    }

    #[test]
    fn scrub_removes_credentials_from_messages() {
        let msg = "failed to connect to 'https://bob:hunter2@example.com/x.git': 401 (see https://ok.example/)";
        let scrubbed = scrub(msg);
        assert!(!scrubbed.contains("hunter2"), "{scrubbed}");
        assert!(!scrubbed.contains("bob"), "{scrubbed}");
        assert!(scrubbed.contains("'https://example.com/x.git'"), "{scrubbed}");
        assert!(scrubbed.contains("(see https://ok.example/)"), "{scrubbed}");
    }

    #[test]
    fn open_creates_the_cache_named_by_url_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = make_repo(tmp.path(), "origin", &[("a.yaml", File(b"a: 1\n"))]);
        let cache_dir = tmp.path().join("cache");
        let repo = Repo::open(spec_for(origin.to_str().unwrap()), &cache_dir).unwrap();
        assert!(repo.cache_path().starts_with(&cache_dir));
        let name = repo.cache_path().file_name().unwrap().to_str().unwrap();
        assert_eq!(name.len(), 64 + 4, "{name}");
        assert!(name.ends_with(".git"));
        assert!(Repository::open_bare(repo.cache_path()).unwrap().is_bare());

        // Same URL, same cache; reopening an existing cache works.
        let again = Repo::open(spec_for(origin.to_str().unwrap()), &cache_dir).unwrap();
        assert_eq!(again.cache_path(), repo.cache_path());
        // The file:// form of the same path shares the cache too.
        let url = format!("file://{}", origin.display());
        let as_url = Repo::open(spec_for(&url), &cache_dir).unwrap();
        assert_eq!(as_url.cache_path(), repo.cache_path());
    }

    #[test]
    fn open_replaces_a_broken_cache() {
        let tmp = tempfile::tempdir().unwrap();
        let origin = make_repo(tmp.path(), "origin", &[("a.yaml", File(b"a: 1\n"))]);
        let cache_dir = tmp.path().join("cache");
        let repo = Repo::open(spec_for(origin.to_str().unwrap()), &cache_dir).unwrap();
        let path = repo.cache_path().to_path_buf();
        std::fs::remove_dir_all(&path).unwrap();
        std::fs::create_dir_all(path.join("garbage")).unwrap();
        let repo = Repo::open(spec_for(origin.to_str().unwrap()), &cache_dir).unwrap();
        assert!(Repository::open_bare(repo.cache_path()).is_ok());
        assert!(!path.join("garbage").exists());
    }

    #[test]
    fn parse_commit_requires_a_full_sha() {
        assert!(parse_commit("0123456789abcdef0123456789abcdef01234567").is_ok());
        assert!(matches!(parse_commit("0123456"), Err(SourceError::InvalidCommit(_))));
        assert!(matches!(parse_commit("main"), Err(SourceError::InvalidCommit(_))));
    }
}
