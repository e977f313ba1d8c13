//! Support for Driftless integration tests.
//!
//! The tests run against a real local control plane (etcd, kube-apiserver, controller-manager,
//! scheduler and kwok) started by `tests/cluster/up`, which writes an admin kubeconfig to
//! `<repo>/.cluster/kubeconfig`. This crate gives tests:
//!
//! - [`client`]: a [`kube::Client`] for that cluster;
//! - [`TestNamespace`]: a uniquely named namespace per test, deleted when dropped, so tests can
//!   run in parallel without seeing each other;
//! - [`GitFixture`]: a throwaway git repository to serve manifests from;
//! - [`wait_for`] / [`wait_for_ok`]: polling with a deadline and a readable failure;
//! - paths: [`repo_root`], [`kubeconfig_path`], [`cluster_bin`], [`audit_log_path`];
//! - [`agent`]: Driftless itself on that cluster: a reconcile context, sources, the binary, counts;
//! - [`cluster`]: a [`cluster::PrivateCluster`] of a test's own (to stop its kube-apiserver
//!   without disturbing the other tests) and [`cluster::AuditTail`] to read an audit log as it grows;
//! - [`browser`]: a [`browser::Browser`], headless Chromium driven over WebDriver, for web pages;
//! - [`dashboard`]: the Grafana dashboard's panels and queries;
//! - [`prometheus`]: a real Prometheus scraping an agent and evaluating alert rules, and `promtool`.

pub mod agent;
pub mod browser;
pub mod cluster;
pub mod dashboard;
pub mod git_http;
pub mod prometheus;
pub mod receiver;

use std::fmt::Debug;
use std::fs;
use std::future::Future;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use git2::{IndexAddOption, Oid, Repository, RepositoryInitOptions, Signature};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{DeleteParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use rand::Rng;
use tempfile::TempDir;

/// Label put on every namespace a test creates, so leftovers can be found and removed:
/// `kubectl delete ns -l driftless.dev/test=true`.
pub const TEST_LABEL: &str = "driftless.dev/test";

/// Environment variable that points the tests at another kubeconfig than `.cluster/kubeconfig`.
pub const KUBECONFIG_ENV: &str = "DRIFTLESS_KUBECONFIG";

/// When set (to anything), [`TestNamespace`] leaves its namespace behind for inspection.
pub const KEEP_NAMESPACES_ENV: &str = "DRIFTLESS_KEEP_NAMESPACES";

/// The repository root (the parent of this crate's directory).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the tests crate lives one level below the repository root").to_path_buf()
}

/// `<repo>/.cluster`, where `tests/cluster/up` keeps its state.
pub fn cluster_dir() -> PathBuf {
    repo_root().join(".cluster")
}

/// The kubeconfig of the local control plane: `$DRIFTLESS_KUBECONFIG` if set, otherwise
/// `<repo>/.cluster/kubeconfig`.
pub fn kubeconfig_path() -> PathBuf {
    match std::env::var_os(KUBECONFIG_ENV) {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => cluster_dir().join("kubeconfig"),
    }
}

/// A binary built by `tests/cluster/build`, e.g. `cluster_bin("kubectl")` or `cluster_bin("helm")`.
pub fn cluster_bin(name: &str) -> PathBuf {
    cluster_dir().join("bin").join(name)
}

/// The kube-apiserver audit log: one JSON event per line, every request at `Metadata` level,
/// written before the response is sent (so it can be read right after a request returns).
pub fn audit_log_path() -> PathBuf {
    cluster_dir().join("audit.log")
}

fn not_running(detail: impl std::fmt::Display) -> ! {
    panic!("local control plane is not running: run tests/cluster/up ({detail})")
}

/// The [`kube::Config`] for the local control plane (see [`kubeconfig_path`]).
///
/// Panics with "local control plane is not running: run tests/cluster/up" when there is no
/// kubeconfig.
pub async fn kube_config() -> Config {
    let path = kubeconfig_path();
    if !path.is_file() {
        not_running(format_args!("no kubeconfig at {}", path.display()));
    }
    try_kube_config(&path).await.unwrap_or_else(|e| panic!("cannot load kubeconfig {}: {e:#}", path.display()))
}

async fn try_kube_config(path: &Path) -> anyhow::Result<Config> {
    let kubeconfig = Kubeconfig::read_from(path)?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

async fn try_client() -> anyhow::Result<Client> {
    Ok(Client::try_from(try_kube_config(&kubeconfig_path()).await?)?)
}

/// A client for the local control plane, authenticated as an admin (group `system:masters`).
///
/// Panics with "local control plane is not running: run tests/cluster/up" when there is no
/// kubeconfig.
pub async fn client() -> Client {
    Client::try_from(kube_config().await).unwrap_or_else(|e| panic!("cannot build a kube client: {e}"))
}

/// `prefix` made DNS-1123 (lowercase alphanumerics and '-') plus a random 6-character suffix,
/// at most 63 characters: usable as a namespace or object name that no parallel test shares.
pub fn unique_name(prefix: &str) -> String {
    const SUFFIX_LEN: usize = 6;
    let mut base = String::new();
    for c in prefix.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            base.push(c);
        } else if !base.is_empty() && !base.ends_with('-') {
            base.push('-');
        }
    }
    base.truncate(63 - SUFFIX_LEN - 1);
    let base = base.trim_end_matches('-');
    let mut rng = rand::rng();
    let suffix: String = (0..SUFFIX_LEN)
        .map(|_| {
            let n = rng.random_range(0..36u8);
            char::from(if n < 10 { b'0' + n } else { b'a' + n - 10 })
        })
        .collect();
    if base.is_empty() {
        format!("x{}", &suffix[1..])
    } else {
        format!("{base}-{suffix}")
    }
}

/// A namespace of its own for one test: `t-<prefix>-<random>`, labelled
/// `driftless.dev/test=true`. Deleted by [`TestNamespace::cleanup`], or else when dropped
/// (also when the test panics). Set `DRIFTLESS_KEEP_NAMESPACES=1` to keep them for debugging.
pub struct TestNamespace {
    name: String,
    client: Client,
    done: bool,
}

impl TestNamespace {
    /// Creates the namespace. `prefix` is usually the test's name; it is sanitised and shortened.
    pub async fn new(client: &Client, prefix: &str) -> Self {
        let name = unique_name(&format!("t-{prefix}"));
        let ns: Namespace = serde_json::from_value(serde_json::json!({
            "apiVersion": "v1",
            "kind": "Namespace",
            "metadata": { "name": name, "labels": { TEST_LABEL: "true" } },
        }))
        .expect("a valid Namespace");
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .unwrap_or_else(|e| panic!("cannot create test namespace {name}: {e}"));
        TestNamespace { name, client: client.clone(), done: false }
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Deletes the namespace now, with the test's own client and runtime (cheaper than the
    /// [`Drop`] fallback). Does not wait for it to disappear. Panics if the delete is refused.
    pub async fn cleanup(mut self) {
        self.done = true;
        if keep_namespaces() {
            return;
        }
        if let Err(e) = delete_namespace(&self.client, &self.name).await {
            panic!("cannot delete test namespace {}: {e:#}", self.name);
        }
    }
}

fn keep_namespaces() -> bool {
    std::env::var_os(KEEP_NAMESPACES_ENV).is_some_and(|v| !v.is_empty())
}

async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    match Api::<Namespace>::all(client.clone()).delete(name, &DeleteParams::background()).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

impl Drop for TestNamespace {
    /// Fallback cleanup. The test's client belongs to the test's runtime, which may be shutting
    /// down (or be a current-thread runtime blocked on this very drop), so the delete runs on a
    /// fresh thread with its own runtime and client. The drop waits for it at most 30s and never
    /// panics: failures are printed and the namespace is left behind.
    fn drop(&mut self) {
        if self.done || keep_namespaces() {
            return;
        }
        let name = self.name.clone();
        let (tx, rx) = mpsc::channel();
        let spawned = std::thread::Builder::new().name(format!("delete-ns-{name}")).spawn(move || {
            let result = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(anyhow::Error::from).and_then(|rt| {
                rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(20), async { delete_namespace(&try_client().await?, &name).await })
                        .await
                        .map_err(|_| anyhow::anyhow!("timed out"))?
                })
            });
            let _ = tx.send(result);
        });
        let outcome = match spawned {
            Err(e) => Err(anyhow::anyhow!("cannot spawn a thread: {e}")),
            Ok(_) => match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(result) => result,
                Err(mpsc::RecvTimeoutError::Timeout) => Err(anyhow::anyhow!("timed out")),
                Err(mpsc::RecvTimeoutError::Disconnected) => Err(anyhow::anyhow!("the delete thread panicked")),
            },
        };
        if let Err(e) = outcome {
            eprintln!("warning: could not delete test namespace {}: {e:#}", self.name);
        }
    }
}

/// Polls `f` until it returns `Some`, and returns that value. Panics naming `what` when
/// `timeout` passes first (a call still running at the deadline is abandoned).
pub async fn wait_for<F, Fut, T>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_ok(what, timeout, move || {
        let fut = f();
        async move { fut.await.ok_or("not yet") }
    })
    .await
}

/// Like [`wait_for`] for a closure returning `Result`: polls until `Ok`; the timeout panic shows
/// the last error, which usually says why.
pub async fn wait_for_ok<F, Fut, T, E>(what: &str, timeout: Duration, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    E: Debug,
{
    let deadline = tokio::time::Instant::now() + timeout;
    let mut delay = Duration::from_millis(50);
    let mut last: Option<E> = None;
    loop {
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        match tokio::time::timeout(remaining, f()).await {
            Ok(Ok(v)) => return v,
            Ok(Err(e)) => last = Some(e),
            Err(_) => {}
        }
        let remaining = deadline.saturating_duration_since(tokio::time::Instant::now());
        if remaining.is_zero() {
            match last {
                Some(e) => panic!("timed out after {timeout:?} waiting for {what} (last: {e:?})"),
                None => panic!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        tokio::time::sleep(delay.min(remaining)).await;
        delay = (delay * 2).min(Duration::from_millis(500));
    }
}

/// A throwaway git repository in a temporary directory (removed on drop), for tests that need a
/// manifests source. Work in the working tree with [`write`](Self::write),
/// [`remove`](Self::remove), [`symlink`](Self::symlink) and [`copy_dir`](Self::copy_dir), then
/// [`commit`](Self::commit) everything to branch `main` (HEAD points at it).
/// Paths are relative to the repository root; `..` and absolute paths are refused.
/// Methods panic on failure: this is test scaffolding.
pub struct GitFixture {
    repo: Repository,
    dir: TempDir,
}

/// Author and committer of every fixture commit.
pub const FIXTURE_AUTHOR: &str = "driftless-tests";
const FIXTURE_EMAIL: &str = "driftless-tests@driftless.invalid";

impl Default for GitFixture {
    fn default() -> Self {
        Self::new()
    }
}

impl GitFixture {
    /// An empty repository whose HEAD is the (unborn) branch `main`.
    pub fn new() -> Self {
        let dir = tempfile::Builder::new().prefix("driftless-git-").tempdir().expect("create a temporary directory");
        let mut opts = RepositoryInitOptions::new();
        opts.initial_head("main");
        let repo = Repository::init_opts(dir.path(), &opts).expect("git init");
        GitFixture { repo, dir }
    }

    /// The working tree (also the repository: `.git` is inside it).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A `file://` URL of the repository, for cloning.
    pub fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }

    /// The underlying git2 repository, for anything this API does not cover.
    pub fn repo(&self) -> &Repository {
        &self.repo
    }

    fn full(&self, rel: impl AsRef<Path>) -> PathBuf {
        let rel = rel.as_ref();
        assert!(
            rel.components().all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
            "fixture paths must be relative and stay inside the repository: {}",
            rel.display()
        );
        assert!(!rel.components().any(|c| c.as_os_str() == ".git"), "fixture paths must not touch .git: {}", rel.display());
        self.path().join(rel)
    }

    fn prepare(&self, full: &Path) {
        if let Some(parent) = full.parent() {
            fs::create_dir_all(parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        }
        // Replace whatever is there, including a symlink or a directory.
        if let Ok(meta) = fs::symlink_metadata(full) {
            let r = if meta.is_dir() { fs::remove_dir_all(full) } else { fs::remove_file(full) };
            r.unwrap_or_else(|e| panic!("remove {}: {e}", full.display()));
        }
    }

    /// Writes a file (creating parent directories), replacing what was at `path`.
    pub fn write(&self, path: impl AsRef<Path>, content: impl AsRef<[u8]>) -> &Self {
        let full = self.full(path);
        self.prepare(&full);
        fs::write(&full, content).unwrap_or_else(|e| panic!("write {}: {e}", full.display()));
        self
    }

    /// Removes a file, symlink or directory (recursively).
    pub fn remove(&self, path: impl AsRef<Path>) -> &Self {
        let full = self.full(path);
        let meta = fs::symlink_metadata(&full).unwrap_or_else(|e| panic!("remove {}: {e}", full.display()));
        let r = if meta.is_dir() { fs::remove_dir_all(&full) } else { fs::remove_file(&full) };
        r.unwrap_or_else(|e| panic!("remove {}: {e}", full.display()));
        self
    }

    /// Creates a symlink at `path` pointing at `target` (stored as given: relative, absolute or
    /// dangling, which is what tests of symlink handling need).
    pub fn symlink(&self, path: impl AsRef<Path>, target: impl AsRef<Path>) -> &Self {
        let full = self.full(path);
        self.prepare(&full);
        std::os::unix::fs::symlink(target.as_ref(), &full)
            .unwrap_or_else(|e| panic!("symlink {} -> {}: {e}", full.display(), target.as_ref().display()));
        self
    }

    /// Copies the directory `from` on disk (e.g. the repository's `manifests-repo-example/`) into
    /// the working tree under `to_prefix` (`""` for the root). Symlinks are copied as symlinks;
    /// a `.git` directory in `from` is skipped.
    pub fn copy_dir(&self, from: impl AsRef<Path>, to_prefix: impl AsRef<Path>) -> &Self {
        let from = from.as_ref();
        let to = self.full(to_prefix);
        fs::create_dir_all(&to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
        copy_tree(from, &to).unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
        self
    }

    /// Stages every change in the working tree (new, modified and deleted files; `.gitignore`
    /// is honoured as `git add -A` would) and commits it to `main`. Returns the commit's sha.
    pub fn commit(&self, message: &str) -> String {
        let mut index = self.repo.index().expect("open index");
        index.add_all(["*"], IndexAddOption::DEFAULT, None).expect("stage files");
        index.update_all(["*"], None).expect("stage deletions");
        index.write().expect("write index");
        let tree_id = index.write_tree().expect("write tree");
        let tree = self.repo.find_tree(tree_id).expect("find tree");
        let sig = Signature::now(FIXTURE_AUTHOR, FIXTURE_EMAIL).expect("signature");
        let parent = self.repo.head().ok().and_then(|h| h.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let oid = self.repo.commit(Some("HEAD"), &sig, &sig, message, &tree, &parents).expect("commit");
        oid.to_string()
    }

    /// The sha HEAD points at. Panics before the first commit.
    pub fn head(&self) -> String {
        self.head_oid().to_string()
    }

    fn head_oid(&self) -> Oid {
        self.repo.head().and_then(|h| h.peel_to_commit()).expect("HEAD has no commit yet: call commit() first").id()
    }

    /// Creates (or moves) the lightweight tag `name` at HEAD.
    pub fn tag(&self, name: &str) -> &Self {
        let obj = self.repo.find_object(self.head_oid(), None).expect("HEAD object");
        self.repo.tag_lightweight(name, &obj, true).expect("create tag");
        self
    }

    /// Creates (or moves) the annotated tag `name` at HEAD.
    pub fn tag_annotated(&self, name: &str, message: &str) -> &Self {
        let obj = self.repo.find_object(self.head_oid(), None).expect("HEAD object");
        let sig = Signature::now(FIXTURE_AUTHOR, FIXTURE_EMAIL).expect("signature");
        self.repo.tag(name, &obj, &sig, message, true).expect("create annotated tag");
        self
    }

    /// Creates (or moves) branch `name` at HEAD, without switching to it.
    pub fn branch(&self, name: &str) -> &Self {
        let commit = self.repo.find_commit(self.head_oid()).expect("HEAD commit");
        self.repo.branch(name, &commit, true).expect("create branch");
        self
    }
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        if entry.file_name() == ".git" {
            continue;
        }
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_symlink() {
            if fs::symlink_metadata(&dst).is_ok() {
                fs::remove_file(&dst)?;
            }
            std::os::unix::fs::symlink(fs::read_link(&src)?, &dst)?;
        } else if kind.is_dir() {
            fs::create_dir_all(&dst)?;
            copy_tree(&src, &dst)?;
        } else {
            fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}
