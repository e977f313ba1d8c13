//! Leader election between two `driftless run` processes on the real control plane: only the
//! leader writes (the audit log tells them apart by user agent), when the leader gets SIGTERM it
//! releases the Lease and the standby takes over within 5 seconds, and a leader that is paused
//! (SIGSTOP) while writing has stopped writing before the standby takes over, and writes nothing
//! when it runs again.

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use driftless_tests::agent::{audit_events, configmap, configmaps, dynamic_api, is_write, AgentProcess};
use driftless_tests::{audit_log_path, client, unique_name, wait_for, GitFixture, TestNamespace};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use serde_json::{json, Value};

/// Successful writes to the app namespace by one replica (its user agent names it), with their
/// times.
fn writes_by(events: &[Value], namespace: &str, replica: &str) -> Vec<String> {
    let marker = format!("({replica})");
    events
        .iter()
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/") && u.contains(&marker)))
        .filter(|e| is_write(e) && e["objectRef"]["namespace"] == namespace)
        .filter(|e| e["responseStatus"]["code"].as_i64().is_some_and(|c| c < 300))
        .map(|e| e["stageTimestamp"].as_str().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn only_the_leader_writes_and_a_terminated_leader_hands_over_within_five_seconds() {
    let client = client().await;
    let inventory = TestNamespace::new(&client, "leader-inv").await;
    let app = TestNamespace::new(&client, "leader-app").await;
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "1"));
    repo.commit("a");
    let name = unique_name("leader");
    let args = ["--repo", &repo.url(), "--name", &name, "--namespace", app.name(), "--interval", "1s", "--leader-elect"];
    let since = audit_events().len();

    let first = AgentProcess::start_with_env(inventory.name(), &args, &[("POD_NAME", "replica-a")]).await;
    wait_for("replica-a to lead", Duration::from_secs(20), || async { (first.gauge("driftless_leader").await == Some(1.0)).then_some(()) })
        .await;
    let second = AgentProcess::start_with_env(inventory.name(), &args, &[("POD_NAME", "replica-b")]).await;
    wait_for("replica-a's first sync", Duration::from_secs(20), || async {
        configmaps(&client, app.name()).await.contains_key("a").then_some(())
    })
    .await;

    // while a leads, b stands by and a applies new commits
    repo.write("b.yaml", configmap("b", "1"));
    repo.commit("b");
    wait_for("the second commit", Duration::from_secs(20), || async {
        configmaps(&client, app.name()).await.contains_key("b").then_some(())
    })
    .await;
    assert_eq!(second.gauge("driftless_leader").await, Some(0.0), "replica-b stands by");
    assert_eq!(second.get("/healthz").await.status, 200, "a standby is alive");
    let standby_page = second.get("/").await;
    assert!(standby_page.body.contains("id=\"standby\""), "the standby's page says so: {}", standby_page.body);
    assert!(!first.get("/").await.body.contains("id=\"standby\""), "the leader's page does not");

    // SIGTERM to the leader: it releases the lease, the standby takes over within 5 s
    let stopped = Instant::now();
    first.terminate();
    wait_for("replica-b to lead", Duration::from_secs(10), || async {
        (second.gauge("driftless_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let handover = stopped.elapsed();
    assert!(handover < Duration::from_secs(5), "handed over in {handover:?}");
    assert!(!second.get("/").await.body.contains("id=\"standby\""), "the new leader's page is not a standby's");
    let mut first = first;
    wait_for("replica-a to exit", Duration::from_secs(10), || std::future::ready(first.exited())).await;

    repo.write("c.yaml", configmap("c", "1"));
    repo.commit("c");
    wait_for("the third commit, applied by replica-b", Duration::from_secs(20), || async {
        configmaps(&client, app.name()).await.contains_key("c").then_some(())
    })
    .await;

    // the audit log: a wrote before the handover, b only after it; never both
    let events: Vec<Value> = audit_events().into_iter().skip(since).collect();
    let by_a = writes_by(&events, app.name(), "replica-a");
    let by_b = writes_by(&events, app.name(), "replica-b");
    assert!(!by_a.is_empty() && !by_b.is_empty(), "a wrote {}, b wrote {}", by_a.len(), by_b.len());
    let last_a = by_a.iter().max().unwrap();
    let first_b = by_b.iter().min().unwrap();
    assert!(last_a < first_b, "a's last write {last_a} is after b's first {first_b}");
    println!("handover in {handover:?}; replica-a wrote {} times, replica-b {} times", by_a.len(), by_b.len());
    app.cleanup().await;
    inventory.cleanup().await;
}

/// The audit log's size now: [`audit_since`] reads what is written after it.
fn audit_offset() -> u64 {
    std::fs::metadata(audit_log_path()).map(|m| m.len()).unwrap_or(0)
}

/// The audit events written since the log had `offset` bytes (the log is large: reading only the
/// new part keeps polling it cheap).
fn audit_since(offset: u64) -> Vec<Value> {
    let mut text = String::new();
    if let Ok(mut file) = std::fs::File::open(audit_log_path()) {
        if file.seek(SeekFrom::Start(offset)).is_ok() {
            let _ = file.read_to_string(&mut text);
        }
    }
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// One request that reached the API server, from the audit log.
#[derive(Debug)]
struct Request {
    received: Timestamp,
    completed: Timestamp,
    verb: String,
    what: String,
    code: i64,
}

impl std::fmt::Display for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {} -> {} (received {}, completed {})", self.verb, self.what, self.code, self.received, self.completed)
    }
}

fn timestamp(v: &Value) -> Timestamp {
    v.as_str().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("an audit timestamp, not {v}"))
}

/// The completed requests one replica (its user agent names it) sent, whatever their answer:
/// `writes` picks every request but reads and the Lease's (what the fence stops), otherwise only
/// the Lease's changes.
fn requests_by(events: &[Value], replica: &str, writes: bool) -> Vec<Request> {
    let marker = format!("({replica})");
    let mut found: Vec<Request> = events
        .iter()
        .filter(|e| e["stage"] == "ResponseComplete")
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/") && u.contains(&marker)))
        .filter(|e| !matches!(e["verb"].as_str(), Some("get" | "list" | "watch")))
        .filter(|e| (e["objectRef"]["resource"] == "leases") != writes)
        .map(|e| Request {
            received: timestamp(&e["requestReceivedTimestamp"]),
            completed: timestamp(&e["stageTimestamp"]),
            verb: e["verb"].as_str().unwrap_or_default().to_string(),
            what: format!(
                "{}/{}/{}",
                e["objectRef"]["namespace"].as_str().unwrap_or("-"),
                e["objectRef"]["resource"].as_str().unwrap_or("-"),
                e["objectRef"]["name"].as_str().unwrap_or("-")
            ),
            code: e["responseStatus"]["code"].as_i64().unwrap_or(0),
        })
        .collect();
    found.sort_by_key(|r| r.received);
    found
}

/// Seconds from `from` to `to` (negative when `to` is earlier).
fn secs(from: Timestamp, to: Timestamp) -> f64 {
    (to.as_millisecond() - from.as_millisecond()) as f64 / 1000.0
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill").args([&format!("-{sig}"), &pid.to_string()]).status().expect("kill runs");
    assert!(status.success(), "kill -{sig} {pid}");
}

/// Another writer editing the source's ConfigMaps in turn (one every 300 ms, at most 250 edits
/// and 90 s), so the leader keeps correcting drift. Stopped by [`Edits::finish`], or aborted
/// when dropped.
struct Edits {
    stop: Arc<AtomicBool>,
    task: Option<tokio::task::JoinHandle<usize>>,
}

impl Edits {
    fn start(client: kube::Client, namespace: &str, names: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let api = dynamic_api(&client, "v1", "ConfigMap", "configmaps", namespace);
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let params = PatchParams { field_manager: Some("kubectl-edit".into()), ..PatchParams::default() };
            let mut made = 0;
            for i in 0..250 {
                if flag.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(90) {
                    break;
                }
                let name = &names[i % names.len()];
                let patch = Patch::Merge(json!({"data": {"value": format!("edit-{i}")}}));
                if matches!(tokio::time::timeout(Duration::from_secs(5), api.patch(name, &params, &patch)).await, Ok(Ok(_))) {
                    made += 1;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            made
        });
        Edits { stop, task: Some(task) }
    }

    /// Stops editing; how many edits were made.
    async fn finish(mut self) -> usize {
        self.stop.store(true, Ordering::SeqCst);
        let task = self.task.take().expect("running");
        tokio::time::timeout(Duration::from_secs(10), task).await.expect("the edits stop").expect("the edit task")
    }
}

impl Drop for Edits {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_leader_stops_writing_before_the_standby_takes_over() {
    let client = client().await;
    let inventory = TestNamespace::new(&client, "paused-inv").await;
    let app = TestNamespace::new(&client, "paused-app").await;
    let repo = GitFixture::new();
    let names: Vec<String> = (0..6).map(|i| format!("c{i}")).collect();
    for n in &names {
        repo.write(format!("{n}.yaml"), configmap(n, "from-git"));
    }
    repo.commit("six configmaps");
    let name = unique_name("paused");
    let (a, b) = (unique_name("paused-a"), unique_name("paused-b"));
    let args = ["--repo", &repo.url(), "--name", &name, "--namespace", app.name(), "--interval", "2s", "--leader-elect"];
    let offset = audit_offset();

    let mut first = AgentProcess::start_with_env(inventory.name(), &args, &[("POD_NAME", &a)]).await;
    wait_for("the first replica to lead", Duration::from_secs(20), || async {
        (first.gauge("driftless_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let second = AgentProcess::start_with_env(inventory.name(), &args, &[("POD_NAME", &b)]).await;
    wait_for("the first sync", Duration::from_secs(30), || async {
        let live = configmaps(&client, app.name()).await;
        names.iter().all(|n| live.contains_key(n)).then_some(())
    })
    .await;
    assert_eq!(second.gauge("driftless_leader").await, Some(0.0), "the second replica stands by");

    // another writer keeps editing; the leader keeps correcting (self-heal writes)
    let edits_from = Timestamp::now();
    let edits = Edits::start(client.clone(), app.name(), names.clone());
    wait_for("the leader to correct three edits and renew its lease", Duration::from_secs(30), || {
        let events = audit_since(offset);
        let corrections = requests_by(&events, &a, true)
            .iter()
            .filter(|r| r.received > edits_from && r.what.starts_with(&format!("{}/configmaps/", app.name())) && r.verb == "patch")
            .count();
        let renewed = requests_by(&events, &a, false).iter().any(|r| r.received > edits_from && r.verb == "update" && r.code < 300);
        std::future::ready((corrections >= 3 && renewed).then_some(()))
    })
    .await;

    // pause the leader mid-write; the standby takes over after the lease stood still for 15 s
    let paused_at = Timestamp::now();
    let paused = Instant::now();
    signal(first.pid(), "STOP");
    let resume = scopeguard(first.pid());
    wait_for("the standby to take over", Duration::from_secs(45), || async {
        (second.gauge("driftless_leader").await == Some(1.0)).then_some(())
    })
    .await;
    let takeover_seen = paused.elapsed();
    let resumed_at = Timestamp::now();
    signal(first.pid(), "CONT");
    drop(resume);
    tokio::time::sleep(Duration::from_secs(10)).await;
    let edited = edits.finish().await;

    // the old leader runs on, standing by, without having panicked
    let exit = first.exited();
    let stderr = first.stderr();
    assert!(!stderr.contains("panicked"), "the old leader panicked:\n{stderr}");
    assert!(exit.is_none_or(|s| s.success()), "the old leader exited with {exit:?}:\n{stderr}");
    if exit.is_none() {
        assert_eq!(first.gauge("driftless_leader").await, Some(0.0), "the old leader stands by:\n{stderr}");
    }
    drop(first);
    drop(second);

    // the audit log
    let events = audit_since(offset);
    let writes_a = requests_by(&events, &a, true);
    let writes_b = requests_by(&events, &b, true);
    let leases_a = requests_by(&events, &a, false);
    let leases_b = requests_by(&events, &b, false);
    let last_a = writes_a.iter().max_by_key(|r| r.completed).expect("the first replica wrote");
    let first_b = writes_b.iter().min_by_key(|r| r.received).expect("the second replica wrote");
    let last_renewal_a = leases_a.iter().filter(|r| r.code < 300 && r.received < paused_at).max_by_key(|r| r.received);
    let acquired_b = leases_b.iter().find(|r| r.code < 300);
    let after_resume: Vec<&Request> = writes_a.iter().filter(|r| r.received >= resumed_at).collect();
    let after_pause: Vec<&Request> = writes_a.iter().filter(|r| r.received >= paused_at).collect();
    let corrections_b: Vec<&Request> = writes_b
        .iter()
        .filter(|r| r.verb == "patch" && r.what.starts_with(&format!("{}/configmaps/", app.name())) && r.code < 300)
        .collect();
    let corrections_after_resume = corrections_b.iter().filter(|r| r.received >= resumed_at).count();
    let report = format!(
        "paused at {paused_at}; takeover seen {:.1}s later; resumed at +{:.1}s; {edited} edits\n\
         old leader ({a}): {} writes, last {last_a} (+{:.3}s); {} writes after the pause, {} after resume; \
         last renewal {} (+{:.3}s)\n\
         new leader ({b}): {} writes, first {first_b} (+{:.3}s); lease taken {} (+{:.3}s); \
         {} configmap corrections, {corrections_after_resume} after resume\n\
         old leader's log: {} writes refused by its fence, {} renewals timed out, lost the lease: {}\n\
         old leader's writes after the pause: {:#?}",
        takeover_seen.as_secs_f64(),
        secs(paused_at, resumed_at),
        writes_a.len(),
        secs(paused_at, last_a.completed),
        after_pause.len(),
        after_resume.len(),
        last_renewal_a.map(ToString::to_string).unwrap_or_default(),
        last_renewal_a.map(|r| secs(paused_at, r.received)).unwrap_or(f64::NAN),
        writes_b.len(),
        secs(paused_at, first_b.received),
        acquired_b.map(ToString::to_string).unwrap_or_default(),
        acquired_b.map(|r| secs(paused_at, r.received)).unwrap_or(f64::NAN),
        corrections_b.len(),
        stderr.matches("does not hold the leader lease").count(),
        stderr.matches("lease renewal timed out").count(),
        stderr.contains("lost the lease; stopped writing"),
        after_pause,
    );
    println!("{report}");
    assert!(last_a.completed < first_b.received, "the writes overlap:\n{report}");
    assert!(after_resume.is_empty(), "the old leader wrote after it was resumed:\n{report}");
    assert!(!corrections_b.is_empty() && corrections_after_resume > 0, "the new leader did not keep correcting:\n{report}");
    app.cleanup().await;
    inventory.cleanup().await;
}

/// Sends SIGCONT to `pid` when dropped (so a failing test leaves no stopped process behind
/// until the agent's own drop kills it).
fn scopeguard(pid: u32) -> impl Drop {
    struct Resume(u32);
    impl Drop for Resume {
        fn drop(&mut self) {
            let _ = std::process::Command::new("kill").args(["-CONT", &self.0.to_string()]).status();
        }
    }
    Resume(pid)
}
