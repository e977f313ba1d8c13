//! The many-sources scenario (`--sources N`), in the shape of Flux's published benchmark: N
//! sources in one agent, each an app of a Namespace, a ServiceAccount, a ConfigMap, a Deployment
//! and a headless Service, all in one repository (a directory per source). Measures the time
//! from the agent's start until every source is Synced and Healthy (MTTP), the agent's peak
//! resident memory and CPU time, the watches it holds (its `driftless_watches` and the watch
//! requests in the audit log) and its API requests in an idle minute. Prints, asserts nothing.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use driftless_tests::agent::AgentProcess;
use driftless_tests::cluster::{by_driftless, AuditTail};
use driftless_tests::{audit_log_path, unique_name, GitFixture};
use serde_json::{json, Value};

use crate::{create_namespace, delete_leftovers, memory_kib};

fn app(namespace: &str, i: usize) -> Vec<(String, String)> {
    let file = |name: &str| format!("app-{i:04}/{name}.yaml");
    vec![
        (file("namespace"), format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {namespace}\n  labels: {{driftless.dev/bench: \"true\"}}\n")),
        (file("serviceaccount"), "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: app\n".to_string()),
        (file("configmap"), format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: app\ndata:\n  value: \"{i}\"\n")),
        (
            file("deployment"),
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {app: app}\n  template:\n    metadata:\n      labels: {app: app}\n    spec:\n      serviceAccountName: app\n      containers:\n        - name: app\n          image: registry.example/bench:1\n          resources: {requests: {cpu: 10m, memory: 16Mi}}\n".to_string(),
        ),
        (
            file("service"),
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: app\nspec:\n  clusterIP: None\n  selector: {app: app}\n  ports: [{port: 80}]\n".to_string(),
        ),
    ]
}

/// CPU time (user and system) of a process, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // the fields after the command name, which is in parentheses and may hold spaces
    let after = stat.rsplit_once(')').map(|(_, rest)| rest).unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, 12 and 13 after the name and state
    (ticks(11) + ticks(12)) / 100.0
}

/// Distinct requests (by audit ID) of Driftless among audit events.
fn requests(events: &[Value], pick: impl Fn(&Value) -> bool) -> usize {
    events.iter().filter(|e| by_driftless(e) && pick(e)).filter_map(|e| e["auditID"].as_str()).collect::<HashSet<_>>().len()
}

pub async fn run(client: &kube::Client, n: usize) -> Result<()> {
    println!("driftless benchmark: {n} sources, each a Namespace, ServiceAccount, ConfigMap, Deployment and headless Service");
    delete_leftovers(client).await?;
    let run = unique_name("bsrc");
    let inventory = format!("{run}-inv");
    create_namespace(client, &inventory).await?;
    let repo = GitFixture::new();
    let namespaces: Vec<String> = (0..n).map(|i| format!("{run}-{i}")).collect();
    for (i, ns) in namespaces.iter().enumerate() {
        for (path, content) in app(ns, i) {
            repo.write(path, content);
        }
    }
    repo.commit("bench: N apps");
    let names: Vec<String> = (0..n).map(|i| format!("{run}-{i}")).collect();
    let sources: Vec<Value> = (0..n)
        .map(|i| json!({"name": names[i], "repo": repo.url(), "path": format!("app-{i:04}"), "namespace": namespaces[i], "interval": "1m"}))
        .collect();
    let dir = tempfile::tempdir()?;
    let config = dir.path().join("driftless.yaml");
    std::fs::write(&config, serde_json::to_string(&json!({ "sources": sources }))?)?;

    // from the agent's start until every source is Synced and Healthy
    let mut audit = AuditTail::from_end(audit_log_path());
    let started = Instant::now();
    let agent = AgentProcess::start(&inventory, &["--config", config.to_str().unwrap_or_default()]).await;
    let mut last_report = Instant::now();
    let mttp = loop {
        let statuses = agent.get("/status").await.json();
        let all = statuses.as_array().cloned().unwrap_or_default();
        let done = all.iter().filter(|s| s["state"] == "Synced" && s["health"] == "Healthy").count();
        if done == n {
            break started.elapsed();
        }
        if started.elapsed() > Duration::from_secs(1800) {
            bail!("{done} of {n} sources Synced and Healthy after 30 minutes");
        }
        if last_report.elapsed() > Duration::from_secs(30) {
            println!("  ... {done} of {n} Synced and Healthy after {:.0} s", started.elapsed().as_secs_f64());
            last_report = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let cpu = cpu_seconds(agent.pid());
    let (peak_kib, rss_kib) = memory_kib(agent.pid());
    let watches = agent.gauge("driftless_watches").await.unwrap_or(f64::NAN);
    let events = audit.read();
    let watch_requests = requests(&events, |e| e["verb"] == "watch");
    let all_requests = requests(&events, |_| true);

    // an idle minute: nothing changes in git or in the cluster
    tokio::time::sleep(Duration::from_secs(10)).await;
    let mut idle = AuditTail::from_end(audit_log_path());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let idle_events = idle.read();
    let idle_requests = requests(&idle_events, |e| e["verb"] != "watch");
    let idle_watches = requests(&idle_events, |e| e["verb"] == "watch");
    let (idle_peak_kib, idle_rss_kib) = memory_kib(agent.pid());
    drop(agent);

    let mib = |kib: u64| format!("{:.1} MiB", kib as f64 / 1024.0);
    println!();
    println!("| {n} sources ({} objects)                         | driftless        |", n * 5);
    println!("|----------------------------------------------------|------------------|");
    println!("| all Synced and Healthy after (MTTP)                | {:<16} |", format!("{:.1} s", mttp.as_secs_f64()));
    println!("| agent CPU time until then                          | {:<16} |", format!("{cpu:.1} s"));
    println!("| agent peak resident memory                         | {:<16} |", mib(peak_kib.max(idle_peak_kib)));
    println!("| agent resident memory after the idle minute        | {:<16} |", mib(idle_rss_kib));
    println!("| driftless_watches                                  | {watches:<16} |");
    println!("| watch requests until all Synced (audit log)        | {watch_requests:<16} |");
    println!("| API requests until all Synced (audit log)          | {all_requests:<16} |");
    println!("| API requests in an idle minute, watches aside      | {idle_requests:<16} |");
    println!("| watch requests (re)opened in that minute           | {idle_watches:<16} |");
    println!();
    println!("agent resident memory when all were Synced: {}", mib(rss_kib));

    // clean up: the namespaces (and so the apps) and the parents' namespace
    delete_leftovers(client).await?;
    Ok(())
}
