//! `driftless run`: the agent loop as a child process against the local control plane. Sources
//! are reconciled on their interval and independently (a broken one never stalls a good one), a
//! new commit is picked up by the loop, and a bad config is refused before anything runs.

use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use driftless_tests::agent::{configmap, configmaps, driftless_bin, AGENT_NAMESPACE};
use driftless_tests::{client, kubeconfig_path, unique_name, wait_for, GitFixture, TestNamespace};
use tempfile::TempDir;

/// A running `driftless run`, killed when dropped (also when the test panics). Its output goes
/// to files so it can be read while it runs.
struct RunningAgent {
    child: Child,
    dir: TempDir,
}

impl RunningAgent {
    /// Starts `driftless run <args>` with the test cluster's kubeconfig, inventory namespace and
    /// a cache directory of its own.
    fn start(args: &[&str]) -> Self {
        let dir = TempDir::new().expect("a temporary directory");
        let cache = dir.path().join("cache");
        let child = Command::new(driftless_bin())
            .arg("run")
            .arg("--kubeconfig")
            .arg(kubeconfig_path())
            .args(["--inventory-namespace", AGENT_NAMESPACE])
            .arg("--cache-dir")
            .arg(&cache)
            // loopback only, and a port of its own: tests run in parallel
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("POD_NAMESPACE")
            .env_remove("DRIFTLESS_CONFIG")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(File::create(dir.path().join("stdout")).expect("stdout file"))
            .stderr(File::create(dir.path().join("stderr")).expect("stderr file"))
            .spawn()
            .expect("driftless run starts");
        RunningAgent { child, dir }
    }

    /// Everything written to stderr so far, without terminal colours.
    fn stderr(&self) -> String {
        strip_ansi(&std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default())
    }

    /// Waits up to `timeout` for the process to exit on its own.
    fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Asks it to stop with SIGTERM (by its own pid), as Kubernetes does.
    fn terminate(&self) {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status().expect("kill runs");
        assert!(status.success());
    }
}

impl Drop for RunningAgent {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if ('@'..='~').contains(&c) {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until the namespace holds exactly `names` as ConfigMaps.
async fn wait_for_configmaps(client: &kube::Client, ns: &str, names: &[&str], timeout: Duration, agent: &RunningAgent) {
    let want: Vec<String> = names.iter().map(|s| s.to_string()).collect();
    let started = Instant::now();
    let found = tokio::time::timeout(timeout, async {
        loop {
            let have: Vec<String> = configmaps(client, ns).await.into_keys().collect();
            if have == want {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
    .await;
    assert!(
        found.is_ok(),
        "ConfigMaps {want:?} did not appear in {ns} within {:?}; have {:?}\nagent stderr:\n{}",
        started.elapsed(),
        configmaps(client, ns).await.keys().collect::<Vec<_>>(),
        agent.stderr()
    );
}

/// The warning and error lines of the agent's log about `source` failing.
fn failure_lines(agent: &RunningAgent, source: &str) -> Vec<String> {
    agent
        .stderr()
        .lines()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .filter(|l| l.contains("failed") && (l.contains(&format!("source={source} ")) || l.contains(&format!("source=\"{source}\""))))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn run_with_a_config_syncs_sources_independently_and_follows_new_commits() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "run-config").await;
    let good_repo = GitFixture::new();
    good_repo.write("a.yaml", configmap("a", "1")).write("b.yaml", configmap("b", "1"));
    good_repo.commit("a and b");
    let good = unique_name("run-good");
    let bad = unique_name("run-bad");
    let missing: PathBuf = std::env::temp_dir().join(unique_name("driftless-no-such-repo"));
    let config_dir = TempDir::new().unwrap();
    let config = config_dir.path().join("driftless.yaml");
    std::fs::write(
        &config,
        format!(
            "sources:\n\
             - name: {bad}\n  repo: file://{missing}\n  namespace: {ns}\n  interval: 1s\n\
             - name: {good}\n  repo: {url}\n  namespace: {ns}\n  interval: 1s\n",
            missing = missing.display(),
            ns = ns.name(),
            url = good_repo.url(),
        ),
    )
    .unwrap();

    // given the agent running with a good and a broken source
    let mut agent = RunningAgent::start(&["--config", config.to_str().unwrap()]);

    // then the good source syncs although the other fails
    wait_for_configmaps(&client, ns.name(), &["a", "b"], Duration::from_secs(30), &agent).await;

    // when a commit adds a ConfigMap, then the loop applies it within a few seconds
    good_repo.write("c.yaml", configmap("c", "1"));
    good_repo.commit("c");
    let committed = Instant::now();
    wait_for_configmaps(&client, ns.name(), &["a", "b", "c"], Duration::from_secs(15), &agent).await;
    eprintln!("the new commit was applied {:?} after it landed", committed.elapsed());

    // and the broken source is reported failing, again and again, with its reason
    wait_for("the broken source to fail twice", Duration::from_secs(15), || async {
        (failure_lines(&agent, &bad).len() >= 2).then_some(())
    })
    .await;
    let lines = failure_lines(&agent, &bad);
    assert!(lines.iter().all(|l| l.contains("FetchFailed")), "the reason is logged: {lines:#?}");
    assert!(failure_lines(&agent, &good).is_empty(), "the good source failed:\n{}", agent.stderr());
    assert!(agent.stderr().contains(&missing.display().to_string()), "the broken repo is named:\n{}", agent.stderr());

    // when it is sent SIGTERM, then it stops cleanly
    agent.terminate();
    let status = agent.wait_exit(Duration::from_secs(10)).expect("driftless run exits on SIGTERM");
    assert!(status.success(), "{status:?}\n{}", agent.stderr());
    assert!(agent.stderr().contains("shutting down"));
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn run_with_flags_reconciles_a_single_source() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "run-flags").await;
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "1")).write("b.yaml", configmap("b", "1")).write("c.yaml", configmap("c", "1"));
    repo.commit("a, b and c");
    let name = unique_name("run-flags");

    // given `driftless run` with the source given by flags
    let agent = RunningAgent::start(&["--repo", &repo.url(), "--name", &name, "--namespace", ns.name(), "--interval", "1s"]);
    wait_for_configmaps(&client, ns.name(), &["a", "b", "c"], Duration::from_secs(30), &agent).await;

    // when a commit adds d and removes c, then the loop applies and prunes
    repo.write("d.yaml", configmap("d", "1")).remove("c.yaml");
    repo.commit("d instead of c");
    wait_for_configmaps(&client, ns.name(), &["a", "b", "d"], Duration::from_secs(15), &agent).await;
    assert!(failure_lines(&agent, &name).is_empty(), "{}", agent.stderr());
    drop(agent);
    ns.cleanup().await;
}

#[test]
fn run_refuses_a_config_with_an_unknown_field() {
    let dir = TempDir::new().unwrap();
    let config = dir.path().join("driftless.yaml");
    std::fs::write(&config, "sources:\n- name: shop\n  repo: https://git.example/shop.git\n  intervall: 1s\n").unwrap();

    let mut agent = RunningAgent::start(&["--config", config.to_str().unwrap()]);
    let status = agent.wait_exit(Duration::from_secs(30)).expect("driftless run exits");
    assert_eq!(status.code(), Some(2), "{}", agent.stderr());
    let stderr = agent.stderr();
    assert!(stderr.contains("intervall"), "the field is named: {stderr}");
    assert!(stderr.contains(config.to_str().unwrap()), "the file is named: {stderr}");
}

#[test]
fn run_without_config_or_repo_is_a_usage_error() {
    let mut agent = RunningAgent::start(&["--name", "x"]);
    let status = agent.wait_exit(Duration::from_secs(30)).expect("driftless run exits");
    assert_eq!(status.code(), Some(2), "{}", agent.stderr());
    assert!(agent.stderr().contains("--repo is required"), "{}", agent.stderr());
}
