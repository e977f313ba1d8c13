//! Driftless benchmark on the local control plane. Builds a git repository of N objects (a mix
//! of ConfigMaps, Deployments and Services) and measures, in one run:
//!
//! - cold apply: `driftless sync` of the repository into an empty namespace, wall time;
//! - the same with `kubectl apply --server-side --prune --applyset` as the baseline;
//! - no-op resync: `driftless run` polls with nothing new in git: time per poll and API requests
//!   (from the API server's audit log);
//! - a 1% change: the reconcile of a commit that changes 1% of the objects;
//! - drift correction latency: outside edits of owned fields until they are reverted, p50/p95;
//! - the agent's peak resident memory.
//!
//! `--sources N` runs the many-sources scenario instead (see [`sources`]).
//!
//! Figures are printed, never asserted.

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod sources;

use anyhow::{bail, Result};
use clap::Parser;
use driftless_tests::agent::{configmaps, dynamic_api, get, is_write};
use driftless_tests::cluster::{by_driftless, AuditTail};
use driftless_tests::{audit_log_path, client, cluster_bin, kubeconfig_path, unique_name, wait_for_ok, GitFixture};
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::{json, Value};

#[derive(Parser)]
#[command(about = "Measures Driftless on the local control plane")]
struct Args {
    /// Objects in the repository (a third each ConfigMaps, Deployments and Services).
    #[arg(long, default_value_t = 1000)]
    objects: usize,
    /// Outside edits for the drift latency.
    #[arg(long, default_value_t = 20)]
    edits: usize,
    /// The driftless binary (release build).
    #[arg(long, default_value = "target/release/driftless")]
    driftless: PathBuf,
    /// Skip the kubectl baseline.
    #[arg(long)]
    skip_kubectl: bool,
    /// Headless Services (no cluster IP): takes the API server's serialized cluster-IP
    /// allocation (about 27 ms a Service on the local control plane) out of both cold applies.
    #[arg(long)]
    headless_services: bool,
    /// Instead: the many-sources scenario, N sources of five objects each in one agent.
    #[arg(long)]
    sources: Option<usize>,
}

const INVENTORY_NS: &str = "driftless-bench";

fn object(i: usize, version: &str, headless: bool) -> String {
    match i % 3 {
        0 => format!(
            "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg-{i}\n  labels: {{app: bench}}\ndata:\n  value: \"{version}\"\n  settings: |\n    mode=production\n    workers=4\n"
        ),
        1 => format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-{i}\n  labels: {{app: bench}}\nspec:\n  replicas: 1\n  selector:\n    matchLabels: {{app: app-{i}}}\n  template:\n    metadata:\n      labels: {{app: app-{i}}}\n    spec:\n      containers:\n        - name: app\n          image: registry.example/bench:1\n          ports: [{{containerPort: 8080}}]\n          resources: {{requests: {{cpu: 10m, memory: 16Mi}}}}\n"
        ),
        _ => format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: svc-{i}\n  labels: {{app: bench}}\nspec:\n{}  selector: {{app: app-{}}}\n  ports: [{{port: 80, targetPort: 8080}}]\n",
            if headless { "  clusterIP: None\n" } else { "" },
            i - 1
        ),
    }
}

/// The agent as a child process, logging JSON to a file; killed on drop.
struct AgentProcess {
    child: Child,
    log: PathBuf,
}

impl AgentProcess {
    fn start(bin: &Path, repo: &str, name: &str, ns: &str, cache: &Path, log: PathBuf) -> Result<Self> {
        let child = Command::new(bin)
            .args(["--log-format", "json", "run", "--repo", repo, "--name", name, "--namespace", ns, "--interval", "1s"])
            .args(["--kubeconfig", kubeconfig_path().to_str().unwrap(), "--inventory-namespace", INVENTORY_NS])
            .args(["--cache-dir", cache.to_str().unwrap()])
            .env("RUST_LOG", "driftless=debug,info")
            .env_remove("POD_NAMESPACE")
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()?;
        Ok(AgentProcess { child, log })
    }
    /// Log events with this message.
    fn events(&self, message: &str) -> Vec<Value> {
        let Ok(f) = fs::File::open(&self.log) else { return vec![] };
        BufReader::new(f)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| serde_json::from_str::<Value>(&l).ok())
            .filter(|e| e["fields"]["message"] == message)
            .collect()
    }
    /// Peak and current resident memory in KiB.
    fn memory_kib(&self) -> (u64, u64) {
        memory_kib(self.child.id())
    }
    async fn wait_for(&self, message: &str, count: usize, timeout: Duration) -> Result<Vec<Value>> {
        let deadline = Instant::now() + timeout;
        loop {
            let events = self.events(message);
            if events.len() >= count {
                return Ok(events);
            }
            if Instant::now() > deadline {
                bail!("agent did not log {count} {message:?} within {timeout:?}; see {}", self.log.display());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Peak and current resident memory of a process in KiB.
fn memory_kib(pid: u32) -> (u64, u64) {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status.lines().find(|l| l.starts_with(name)).and_then(|l| l.split_whitespace().nth(1)).and_then(|v| v.parse().ok()).unwrap_or(0)
    };
    (field("VmHWM:"), field("VmRSS:"))
}

/// Deletes the namespaces an earlier run left behind (labelled `driftless.dev/bench`) and waits
/// until they are gone: their deletion loads the cluster, so nothing is timed meanwhile.
async fn delete_leftovers(client: &kube::Client) -> Result<()> {
    let nss = dynamic_api(client, "v1", "Namespace", "namespaces", "");
    let leftovers = kube::api::ListParams::default().labels("driftless.dev/bench=true");
    for old in nss.list(&leftovers).await?.items {
        if let Some(name) = old.metadata.name {
            let _ = nss.delete(&name, &DeleteParams::background()).await;
        }
    }
    wait_for_ok("earlier benchmark namespaces to be deleted", Duration::from_secs(1200), || async {
        match nss.list(&leftovers).await {
            Ok(list) if list.items.is_empty() => Ok(()),
            Ok(list) => Err(format!("{} still terminating", list.items.len())),
            Err(e) => Err(e.to_string()),
        }
    })
    .await;
    Ok(())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[idx.min(sorted.len() - 1)]
}

async fn create_namespace(client: &kube::Client, name: &str) -> Result<()> {
    let api = dynamic_api(client, "v1", "Namespace", "namespaces", "");
    let ns = serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": {"driftless.dev/bench": "true"}}}),
    )?;
    api.create(&PostParams::default(), &ns).await?;
    Ok(())
}

/// Waits until every Deployment in the namespace has its replica available.
async fn wait_rolled_out(client: &kube::Client, ns: &str) {
    let deployments = dynamic_api(client, "apps/v1", "Deployment", "deployments", ns);
    wait_for_ok("Driftless's Deployments to roll out", Duration::from_secs(600), || async {
        let list = deployments.list(&kube::api::ListParams::default()).await.map_err(|e| e.to_string())?;
        let pending = list
            .items
            .iter()
            .filter(|d| d.data["status"]["availableReplicas"].as_i64().unwrap_or(0) < d.data["spec"]["replicas"].as_i64().unwrap_or(1))
            .count();
        if pending == 0 {
            Ok(())
        } else {
            Err(format!("{pending} Deployments not rolled out"))
        }
    })
    .await
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let client = client().await;
    if let Some(sources) = args.sources {
        return sources::run(&client, sources).await;
    }
    let n = args.objects;
    let work = tempfile::tempdir()?;
    println!(
        "driftless benchmark: {n} objects, {} drift edits{}",
        args.edits,
        if args.headless_services { ", headless Services" } else { "" }
    );

    // namespaces an interrupted earlier run left behind
    delete_leftovers(&client).await?;
    let nss = dynamic_api(&client, "v1", "Namespace", "namespaces", "");

    let repo = GitFixture::new();
    for i in 0..n {
        repo.write(format!("obj-{i:05}.yaml"), object(i, "v1", args.headless_services));
    }
    repo.commit("bench: all objects");
    let repo_url = repo.url();

    // cold apply, driftless
    let ns = unique_name("bench-dl");
    create_namespace(&client, &ns).await?;
    let name = unique_name("bench");
    let started = Instant::now();
    let out = Command::new(&args.driftless)
        .args(["sync", "--repo", &repo_url, "--name", &name, "--namespace", &ns, "-o", "json"])
        .args(["--kubeconfig", kubeconfig_path().to_str().unwrap(), "--inventory-namespace", INVENTORY_NS])
        .args(["--cache-dir", work.path().join("sync-cache").to_str().unwrap()])
        .env_remove("POD_NAMESPACE")
        .output()?;
    let cold = started.elapsed();
    if !out.status.success() {
        bail!("driftless sync failed: {}", String::from_utf8_lossy(&out.stdout));
    }
    println!("  cold apply (driftless sync): {:.2}s", cold.as_secs_f64());

    // the baseline starts on a quiet cluster: the controllers first finish rolling out what
    // Driftless created (otherwise kubectl would be timed under that load)
    let settled = Instant::now();
    wait_rolled_out(&client, &ns).await;
    println!("  (Driftless's Deployments rolled out {:.1}s after its sync returned)", settled.elapsed().as_secs_f64());

    // cold apply, kubectl baseline
    let kubectl = if args.skip_kubectl {
        None
    } else {
        let kns = unique_name("bench-kc");
        create_namespace(&client, &kns).await?;
        let started = Instant::now();
        let out = Command::new(cluster_bin("kubectl"))
            .args(["--kubeconfig", kubeconfig_path().to_str().unwrap(), "-n", &kns])
            .args(["apply", "--server-side", "--prune", "--applyset", "bench-baseline", "-f"])
            .arg(repo.path())
            .env("KUBECTL_APPLYSET", "true")
            .stdout(Stdio::null())
            .output()?;
        let took = started.elapsed();
        if !out.status.success() {
            bail!("kubectl apply failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        println!("  cold apply (kubectl apply --server-side --prune --applyset): {:.2}s", took.as_secs_f64());
        Some((kns, took))
    };

    // the agent: first poll (all unchanged), then no-op polls
    let agent = AgentProcess::start(&args.driftless, &repo_url, &name, &ns, &work.path().join("run-cache"), work.path().join("agent.log"))?;
    agent.wait_for("sync finished", 1, Duration::from_secs(120)).await?;
    agent.wait_for("poll: nothing new", 2, Duration::from_secs(30)).await?;
    let mut audit = AuditTail::from_end(audit_log_path());
    let before = agent.events("poll: nothing new").len();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let noop_requests: Vec<Value> = audit.read().into_iter().filter(by_driftless).collect();
    let mut noop_us: Vec<f64> =
        agent.events("poll: nothing new")[before..].iter().filter_map(|e| e["fields"]["elapsed_us"].as_f64()).collect();
    noop_us.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let after_start = agent.memory_kib();
    println!(
        "  no-op resync: {} polls, p50 {:.2} ms, {} API requests",
        noop_us.len(),
        percentile(&noop_us, 50.0) / 1000.0,
        noop_requests.len()
    );

    // a 1% change
    let changed = (n / 100).max(1);
    let mut idx = 0;
    let mut done = 0;
    while done < changed {
        if idx % 3 == 0 {
            repo.write(format!("obj-{idx:05}.yaml"), object(idx, "v2", args.headless_services));
            done += 1;
        }
        idx += 1;
    }
    repo.commit("bench: change 1%");
    let syncs_before = agent.events("sync finished").len();
    let mut audit = AuditTail::from_end(audit_log_path());
    let synced = agent.wait_for("sync finished", syncs_before + 1, Duration::from_secs(120)).await?;
    let change_ms = synced[syncs_before]["fields"]["duration_ms"].as_f64().unwrap_or(f64::NAN);
    let change_writes =
        audit.read().iter().filter(|e| by_driftless(e) && is_write(e) && e["objectRef"]["namespace"] == ns.as_str()).count();
    println!("  1% change ({changed} objects): {change_ms:.0} ms, {change_writes} writes");
    let after_change = agent.memory_kib();

    // drift: outside edits of owned fields, each until reverted
    tokio::time::sleep(Duration::from_secs(1)).await;
    let cms = dynamic_api(&client, "v1", "ConfigMap", "configmaps", &ns);
    let names: Vec<String> = configmaps(&client, &ns).await.into_keys().filter(|k| k.starts_with("cfg-")).collect();
    let mut latencies = Vec::new();
    for name in names.iter().rev().take(args.edits) {
        let original = get(&cms, name).await.and_then(|o| o["data"]["value"].as_str().map(String::from));
        let params = PatchParams { field_manager: Some("bench-editor".into()), ..PatchParams::default() };
        cms.patch(name, &params, &Patch::Merge(json!({"data": {"value": "edited"}}))).await?;
        let edited = Instant::now();
        loop {
            let now = get(&cms, name).await.and_then(|o| o["data"]["value"].as_str().map(String::from));
            if now == original {
                latencies.push(edited.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            if edited.elapsed() > Duration::from_secs(30) {
                bail!("{name} was not reverted within 30s");
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    latencies.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let (peak_kib, rss_kib) = agent.memory_kib();
    drop(agent);

    println!();
    println!("| measure ({n} objects)                     | driftless        | kubectl baseline | target            |");
    println!("|-------------------------------------------|------------------|------------------|-------------------|");
    let kubectl_cold = kubectl.as_ref().map(|(_, t)| format!("{:.2} s", t.as_secs_f64())).unwrap_or("-".into());
    let speedup = kubectl.as_ref().map(|(_, t)| t.as_secs_f64() / cold.as_secs_f64());
    println!(
        "| cold apply                                | {:<16} | {:<16} | 3x faster         |",
        format!("{:.2} s", cold.as_secs_f64()),
        kubectl_cold
    );
    if let Some(x) = speedup {
        println!("| cold apply speed-up over kubectl          | {:<16} |                  | >= 3x             |", format!("{x:.1}x"));
    }
    println!(
        "| no-op resync, time per poll (p50)         | {:<16} |                  | < 50 ms           |",
        format!("{:.2} ms", percentile(&noop_us, 50.0) / 1000.0)
    );
    println!("| no-op resync, API requests in 5 s         | {:<16} |                  | 0                 |", noop_requests.len());
    println!(
        "| 1% change ({changed} objects), reconcile         | {:<16} |                  |                   |",
        format!("{change_ms:.0} ms")
    );
    println!("| 1% change, writes                         | {:<16} |                  | {changed:<17} |", change_writes);
    println!(
        "| drift correction latency p50              | {:<16} |                  |                   |",
        format!("{:.0} ms", percentile(&latencies, 50.0))
    );
    println!(
        "| drift correction latency p95              | {:<16} |                  | < 1000 ms         |",
        format!("{:.0} ms", percentile(&latencies, 95.0))
    );
    println!(
        "| agent peak resident memory                | {:<16} |                  | < 64 MiB at 5,000 |",
        format!("{:.1} MiB", peak_kib as f64 / 1024.0)
    );
    println!(
        "| agent resident memory at the end          | {:<16} |                  |                   |",
        format!("{:.1} MiB", rss_kib as f64 / 1024.0)
    );
    let mib = |(peak, rss): (u64, u64)| format!("peak {:.1} MiB, resident {:.1} MiB", peak as f64 / 1024.0, rss as f64 / 1024.0);
    println!();
    println!("agent memory after its first reconcile and the no-op polls: {}", mib(after_start));
    println!("agent memory after the 1% change: {}", mib(after_change));
    println!("agent memory after the drift edits: {}", mib((peak_kib, rss_kib)));

    // clean up
    let _ = nss.delete(&ns, &DeleteParams::background()).await;
    if let Some((kns, _)) = kubectl {
        let _ = nss.delete(&kns, &DeleteParams::background()).await;
    }
    let parents = dynamic_api(&client, "v1", "ConfigMap", "configmaps", INVENTORY_NS);
    let _ = parents.delete(&format!("driftless-{name}"), &DeleteParams::background()).await;
    Ok(())
}
