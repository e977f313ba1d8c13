//! Control planes of a test's own and reading an audit log as it grows.
//!
//! [`PrivateCluster`] starts a second local control plane (`tests/cluster/up` with
//! `DRIFTLESS_CLUSTER_DIR`) in a directory of its own under `<repo>/.cluster/private/`, with its
//! own ports, etcd data, kubeconfig and audit log, and stops it when dropped. A test that stops a
//! component (the kube-apiserver mid-apply) uses one, so the tests running in parallel on the
//! shared cluster never notice. [`AuditTail`] reads only the events appended to an audit log since
//! it was opened (the shared one grows to hundreds of MB).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use kube::Client;
use rand::Rng;
use serde_json::Value;
use tempfile::TempDir;

use crate::{cluster_dir, repo_root};

/// When set (to anything), a [`PrivateCluster`] is left running and its directory kept, for
/// inspection; stop it with `DRIFTLESS_CLUSTER_DIR=<dir> tests/cluster/down`.
pub const KEEP_PRIVATE_CLUSTER_ENV: &str = "DRIFTLESS_KEEP_PRIVATE_CLUSTER";

/// A local control plane of one test's own (etcd, kube-apiserver, kube-controller-manager,
/// kube-scheduler, kwok and a Ready node, as `tests/cluster/up` makes the shared one, from the
/// same binaries), stopped and removed when dropped (also when the test panics). Its methods
/// block while the scripts run (seconds): call them between awaits, not from many tasks at once.
pub struct PrivateCluster {
    dir: Option<TempDir>,
}

/// The components `tests/cluster/component` can stop and start.
pub const COMPONENTS: [&str; 5] = ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"];

fn script(name: &str) -> PathBuf {
    repo_root().join("tests").join("cluster").join(name)
}

impl PrivateCluster {
    /// Starts one in `<repo>/.cluster/private/<prefix>-<random>` (the shared cluster's binaries
    /// must be built: `tests/cluster/up` has run once). Ports are probed from a random base in
    /// 28000..31990, away from the shared cluster's 27100. Panics with the script's output when
    /// it fails (and stops what it started).
    pub fn start(prefix: &str) -> Self {
        let parent = cluster_dir().join("private");
        std::fs::create_dir_all(&parent).unwrap_or_else(|e| panic!("mkdir {}: {e}", parent.display()));
        let dir = tempfile::Builder::new()
            .prefix(&format!("{prefix}-"))
            .tempdir_in(&parent)
            .unwrap_or_else(|e| panic!("a directory in {}: {e}", parent.display()));
        let base = 28000 + 10 * rand::rng().random_range(0..399u32);
        let cluster = PrivateCluster { dir: Some(dir) };
        let out = Command::new("bash")
            .arg(script("up"))
            .env("DRIFTLESS_CLUSTER_DIR", cluster.dir())
            .env("DRIFTLESS_CLUSTER_PORT_BASE", base.to_string())
            .output()
            .expect("tests/cluster/up runs");
        if !out.status.success() {
            panic!(
                "tests/cluster/up of a private cluster in {} failed ({}):\n{}{}",
                cluster.dir().display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        cluster
    }

    /// Its directory (`DRIFTLESS_CLUSTER_DIR`).
    pub fn dir(&self) -> &Path {
        self.dir.as_ref().expect("the directory lives as long as the cluster").path()
    }

    /// Its admin kubeconfig (group `system:masters`).
    pub fn kubeconfig(&self) -> PathBuf {
        self.dir().join("kubeconfig")
    }

    /// Its audit log (every request at Metadata level, written before the response). A
    /// kube-apiserver started again appends to it.
    pub fn audit_log(&self) -> PathBuf {
        self.dir().join("audit.log")
    }

    /// A component's log.
    pub fn log(&self, component: &str) -> String {
        std::fs::read_to_string(self.dir().join("logs").join(format!("{component}.log"))).unwrap_or_default()
    }

    /// An admin client of this cluster.
    pub async fn client(&self) -> Client {
        let path = self.kubeconfig();
        let kubeconfig = kube::config::Kubeconfig::read_from(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &kube::config::KubeConfigOptions::default())
            .await
            .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
        Client::try_from(config).expect("a kube client")
    }

    /// Runs `tests/cluster/component <action> <component>` on this cluster; returns its output.
    /// Panics when it fails.
    pub fn component(&self, action: &str, component: &str) -> String {
        assert!(COMPONENTS.contains(&component), "no component {component}");
        let out = Command::new("bash")
            .arg(script("component"))
            .args([action, component])
            .env("DRIFTLESS_CLUSTER_DIR", self.dir())
            .output()
            .expect("tests/cluster/component runs");
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "tests/cluster/component {action} {component} failed ({}):\n{text}", out.status);
        text
    }

    /// Stops a component (TERM, KILL after ~5 s) and returns once it is gone.
    pub fn stop_component(&self, component: &str) {
        self.component("stop", component);
    }

    /// Kills a component with SIGKILL (a crash) and returns once it is gone.
    pub fn kill_component(&self, component: &str) {
        self.component("kill", component);
    }

    /// Starts a stopped component again with the arguments `up` gave it, and returns once it
    /// serves (the kube-apiserver's /readyz is ok).
    pub fn start_component(&self, component: &str) {
        self.component("start", component);
    }
}

impl Drop for PrivateCluster {
    /// Stops its processes and removes its directory; failures are printed, never a panic.
    fn drop(&mut self) {
        let Some(dir) = self.dir.take() else { return };
        if std::env::var_os(KEEP_PRIVATE_CLUSTER_ENV).is_some_and(|v| !v.is_empty()) {
            let path = dir.keep();
            eprintln!("keeping the private cluster in {} ({KEEP_PRIVATE_CLUSTER_ENV} is set)", path.display());
            return;
        }
        match Command::new("bash").arg(script("down")).env("DRIFTLESS_CLUSTER_DIR", dir.path()).output() {
            Ok(out) if out.status.success() => {}
            Ok(out) => eprintln!(
                "warning: tests/cluster/down of the private cluster in {} failed ({}):\n{}{}",
                dir.path().display(),
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
            Err(e) => eprintln!("warning: cannot run tests/cluster/down: {e}"),
        }
    }
}

/// Reads an audit log from a position on: each [`AuditTail::read`] returns the events (complete
/// lines) appended since the previous one.
pub struct AuditTail {
    path: PathBuf,
    offset: u64,
    partial: Vec<u8>,
}

impl AuditTail {
    /// From the log's current end: only events written from now on.
    pub fn from_end(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let offset = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        AuditTail { path, offset, partial: Vec::new() }
    }

    /// From the log's beginning.
    pub fn from_start(path: impl Into<PathBuf>) -> Self {
        AuditTail { path: path.into(), offset: 0, partial: Vec::new() }
    }

    /// The events appended since the last call (a line still being written waits for the next).
    pub fn read(&mut self) -> Vec<Value> {
        let Ok(mut file) = File::open(&self.path) else { return Vec::new() };
        if file.seek(SeekFrom::Start(self.offset)).is_err() {
            return Vec::new();
        }
        let mut buf = Vec::new();
        let n = file.read_to_end(&mut buf).unwrap_or(0) as u64;
        self.offset += n;
        self.partial.extend_from_slice(&buf);
        let Some(end) = self.partial.iter().rposition(|&b| b == b'\n') else { return Vec::new() };
        let complete: Vec<u8> = self.partial.drain(..=end).collect();
        complete.split(|&b| b == b'\n').filter(|l| !l.is_empty()).filter_map(|l| serde_json::from_slice(l).ok()).collect()
    }
}

/// Whether an audit event was sent by Driftless (its user agent is `driftless/<version>`).
pub fn by_driftless(e: &Value) -> bool {
    e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/"))
}

/// The HTTP status code an audit event records (0 when it has none).
pub fn code(e: &Value) -> i64 {
    e["responseStatus"]["code"].as_i64().unwrap_or(0)
}
