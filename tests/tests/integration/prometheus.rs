//! A real Prometheus (Debian's `prometheus` package) scraping `driftless run` on loopback, with
//! the alert rules of `helm/alerts/driftless.rules.yaml` loaded, against the local control plane:
//!
//! 1. `promtool check rules` accepts the rules file;
//! 2. every expression of the Grafana dashboard returns data through Prometheus' HTTP API after a
//!    sync, a drift correction and a failed sync (the quantiles a number, not NaN), and every
//!    rule evaluates without error on the real series;
//! 3. DriftlessSourceFailing fires for a failing source (its `for:` shortened to 5 s in a copy
//!    of the file), with the source's name in its labels and expanded annotations, while a
//!    healthy source beside it raises no alert at all (DriftlessSourceNotSynced included, which
//!    does turn pending for the failing one).
//!
//! Each test has its own namespaces, repositories, agent and Prometheus (killed on drop), on
//! free loopback ports, so they run in parallel with the others.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use driftless_tests::agent::{configmap, configmap_value, eventually_ok, intrude_configmap, tail, wait_status, AgentProcess};
use driftless_tests::dashboard::{dashboard_queries, load_dashboard};
use driftless_tests::prometheus::{check_rules, sample_value, Prometheus};
use driftless_tests::{client, repo_root, unique_name, GitFixture, TestNamespace};
use serde_json::{json, Value};
use tempfile::TempDir;

/// The alert rules file, the one copy the chart embeds.
fn rules_path() -> PathBuf {
    repo_root().join("helm/alerts/driftless.rules.yaml")
}

/// A file that does not parse as a manifest: the reconcile fails (RenderFailed).
const UNPARSABLE: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: bad\ndata: [unclosed\n";

/// An agent on the local control plane with `sources` (objects in `ns`, ApplySet parents in
/// `inv`), its config in `dir`.
struct Running {
    client: kube::Client,
    inv: TestNamespace,
    ns: TestNamespace,
    agent: AgentProcess,
    _dir: TempDir,
}

impl Running {
    /// Starts the agent with one source per `(name, repository)`, each polled every `interval`;
    /// waits until each is Synced at its repository's head.
    async fn start(prefix: &str, sources: &[(&str, &GitFixture)], interval: &str) -> Self {
        let client = client().await;
        let inv = TestNamespace::new(&client, &format!("{prefix}-inv")).await;
        let ns = TestNamespace::new(&client, prefix).await;
        let dir = TempDir::new().unwrap();
        let entries: Vec<Value> = sources
            .iter()
            .map(|(name, repo)| json!({"name": name, "repo": repo.url(), "namespace": ns.name(), "interval": interval}))
            .collect();
        let config = dir.path().join("driftless.yaml");
        std::fs::write(&config, serde_json::to_string_pretty(&json!({ "sources": entries })).unwrap()).unwrap();
        let agent = AgentProcess::start(inv.name(), &["--config", config.to_str().unwrap()]).await;
        let r = Running { client, inv, ns, agent, _dir: dir };
        for (name, repo) in sources {
            r.wait_state(name, "Synced", &repo.head()).await;
        }
        r
    }

    /// Waits until `source` is in `state` with `commit` fetched.
    async fn wait_state(&self, source: &str, state: &str, commit: &str) -> Value {
        wait_status(&self.agent, source, &format!("{source} {state} at {commit}"), Duration::from_secs(30), |s| {
            s["state"] == state && s["lastFetchedCommit"] == commit
        })
        .await
    }

    async fn cleanup(self) {
        drop(self.agent);
        self.ns.cleanup().await;
        self.inv.cleanup().await;
    }
}

/// Starts Prometheus scraping `agent` with `rules` loaded; waits until it scraped the agent and
/// evaluated the rules since: DriftlessNoLeader, pending while nothing was scraped yet (no
/// agent), is gone once the lone agent (the leader) is.
async fn prometheus_for(agent: &AgentProcess, rules: PathBuf) -> Prometheus {
    let prom = Prometheus::start(&[agent.addr], &[rules]).await;
    eventually_ok(agent, "Prometheus scraping the agent", Duration::from_secs(30), || async {
        let up = prom.query("up{job=\"driftless\"} == 1").await?;
        let leader = prom.query("driftless_leader == 1").await?;
        let no_leader: Vec<Value> = prom.alerts().await.into_iter().filter(|a| a["labels"]["alertname"] == "DriftlessNoLeader").collect();
        if up.len() == 1 && leader.len() == 1 && no_leader.is_empty() {
            Ok(())
        } else {
            let targets = prom.targets().await;
            Err(format!("up {up:?}, leader {leader:?}, alerts {no_leader:?}, targets {targets:#?}\n{}", tail(&prom.log(), 20)))
        }
    })
    .await;
    prom
}

/// Every rule of the group `driftless` as Prometheus loaded it: (name, health, lastError).
async fn rule_health(prom: &Prometheus) -> Vec<(String, String, String)> {
    let groups = prom.rule_groups().await;
    let group = groups.iter().find(|g| g["name"] == "driftless").unwrap_or_else(|| panic!("no group driftless: {groups:#?}"));
    group["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
            (s("name"), s("health"), s("lastError"))
        })
        .collect()
}

/// The alert names of the rules file.
fn alert_names(rules: &str) -> BTreeSet<String> {
    let v = driftless::render::yaml::parse_config(rules).expect("the rules file is YAML");
    v["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|g| g["rules"].as_array().into_iter().flatten())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// 1. promtool
// ---------------------------------------------------------------------------------------------

#[test]
fn promtool_check_rules_accepts_the_alert_rules() {
    let out = check_rules(&rules_path()).unwrap_or_else(|e| panic!("promtool check rules helm/alerts/driftless.rules.yaml:\n{e}"));
    let text = std::fs::read_to_string(rules_path()).unwrap();
    let names = alert_names(&text);
    assert!(out.contains(&format!("SUCCESS: {} rules found", names.len())), "{out}");
    let expected = ["DriftlessSourceFailing", "DriftlessSourceNotSynced", "DriftlessFight", "DriftlessPruneHeld", "DriftlessNoLeader"];
    assert_eq!(names, expected.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>());
    // and it would say so: a broken copy is refused
    let dir = TempDir::new().unwrap();
    let broken = dir.path().join("broken.rules.yaml");
    std::fs::write(
        &broken,
        text.replacen("expr: increase(driftless_fights_total[15m]) > 0", "expr: increase(driftless_fights_total[15m] > 0", 1),
    )
    .unwrap();
    assert!(check_rules(&broken).is_err(), "promtool accepts an unbalanced expression");
}

// ---------------------------------------------------------------------------------------------
// 2. the dashboard's expressions return data
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn every_dashboard_expression_returns_data_after_a_sync_a_drift_correction_and_a_failed_sync() {
    let started = Instant::now();
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "v1")).write("b.yaml", configmap("b", "v1"));
    repo.commit("a and b");
    let source = unique_name("prom-dash");
    let r = Running::start("prom-dash", &[(&source, &repo)], "2s").await;
    let prom = prometheus_for(&r.agent, rules_path()).await;

    // after Prometheus' first scrape, so that the rates see the counts change: a new revision
    // (a sync and a commit-to-healthy time), a drift correction, a failed sync
    repo.write("b.yaml", configmap("b", "v2"));
    let c2 = repo.commit("b v2");
    r.wait_state(&source, "Synced", &c2).await;
    intrude_configmap(&r.client, r.ns.name(), "a", "intruder").await;
    eventually_ok(&r.agent, "the drift on a corrected", Duration::from_secs(20), || async {
        match configmap_value(&r.client, r.ns.name(), "a").await.as_deref() {
            Some("v1") => Ok(()),
            other => Err(format!("a is {other:?}")),
        }
    })
    .await;
    repo.write("zz-bad.yaml", UNPARSABLE);
    let c3 = repo.commit("unparsable");
    let failed = r.wait_state(&source, "Failed", &c3).await;
    assert_eq!(failed["reason"], "RenderFailed", "{failed:#}");

    // every panel's expression, for this source, over a minute (all of the above is in it)
    let queries: Vec<(String, String)> = dashboard_queries(&load_dashboard())
        .into_iter()
        .map(|(panel, expr)| (panel, expr.replace("$source", &source).replace("$__rate_interval", "1m")))
        .collect();
    assert!(queries.len() >= 15, "{queries:#?}");
    assert!(queries.iter().all(|(_, e)| !e.contains('$')), "a variable left unreplaced: {queries:#?}");
    let mut last: Vec<String> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        last.clear();
        for (panel, expr) in &queries {
            let samples = match prom.query(expr).await {
                Ok(s) => s,
                Err(e) => panic!("{panel}: Prometheus refuses {expr}: {e}"),
            };
            // a quantile of rates that did not change is NaN: no data on the panel
            let quantile = expr.contains("histogram_quantile");
            let data = samples.iter().any(|s| sample_value(s).is_some_and(|v| !quantile || v.is_finite()));
            if !data {
                last.push(format!("{panel}: {expr} -> {samples:?}"));
            }
        }
        if last.is_empty() || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        last.is_empty(),
        "{} of {} dashboard expressions returned no data:\n{}\nPrometheus log:\n{}",
        last.len(),
        queries.len(),
        last.join("\n"),
        tail(&prom.log(), 20)
    );

    // the alert rules evaluate on the real series without error
    let health = rule_health(&prom).await;
    assert_eq!(health.len(), alert_names(&std::fs::read_to_string(rules_path()).unwrap()).len(), "{health:?}");
    for (name, state, error) in &health {
        assert!(state == "ok" || state == "unknown", "{name}: {state} {error}");
        assert!(error.is_empty(), "{name}: {error}");
    }
    eprintln!("{} dashboard expressions returned data; {:?} in all", queries.len(), started.elapsed());
    r.cleanup().await;
}

// ---------------------------------------------------------------------------------------------
// 3. the failing-source alert fires
// ---------------------------------------------------------------------------------------------

/// The rules file with `for:` of alert `alert` changed from `from` to `to` (asserting `from` is
/// what the file says).
fn with_for(rules: &str, alert: &str, from: &str, to: &str) -> String {
    let start = rules.find(&format!("- alert: {alert}\n")).unwrap_or_else(|| panic!("no alert {alert} in the rules file"));
    let end = rules[start + 1..].find("- alert: ").map_or(rules.len(), |i| start + 1 + i);
    let rule = &rules[start..end];
    let old = format!("for: {from}\n");
    assert_eq!(rule.matches(&old).count(), 1, "{alert} does not say `{old}`:\n{rule}");
    format!("{}{}{}", &rules[..start], rule.replace(&old, &format!("for: {to}\n")), &rules[end..])
}

#[tokio::test(flavor = "multi_thread")]
async fn the_failing_source_alert_fires_and_a_healthy_source_raises_none() {
    let started = Instant::now();
    let (good_repo, bad_repo) = (GitFixture::new(), GitFixture::new());
    good_repo.write("healthy.yaml", configmap("healthy", "v1"));
    good_repo.commit("healthy");
    bad_repo.write("failing.yaml", configmap("failing", "v1"));
    bad_repo.commit("failing, still good");
    let (healthy, failing) = (unique_name("prom-healthy"), unique_name("prom-failing"));
    let r = Running::start("prom-alert", &[(&healthy, &good_repo), (&failing, &bad_repo)], "3s").await;

    // the rules with a short wait before DriftlessSourceFailing fires
    let dir = TempDir::new().unwrap();
    let rules = dir.path().join("driftless.rules.yaml");
    let text = std::fs::read_to_string(rules_path()).unwrap();
    std::fs::write(&rules, with_for(&text, "DriftlessSourceFailing", "10m", "5s")).unwrap();
    let prom = prometheus_for(&r.agent, rules).await;

    bad_repo.write("zz-bad.yaml", UNPARSABLE);
    let bad = bad_repo.commit("unparsable");
    r.wait_state(&failing, "Failed", &bad).await;
    let failed_at = Instant::now();

    // DriftlessSourceFailing firing for the failing source, and DriftlessSourceNotSynced at
    // least pending for it (three intervals of 3 s without being in sync); meanwhile no alert
    // of any state names the healthy source, and no other alert shows at all
    let mut about_healthy: Vec<Value> = Vec::new();
    let mut others: Vec<Value> = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let (firing, not_synced) = loop {
        let alerts = prom.alerts().await;
        for a in &alerts {
            let (name, source) = (a["labels"]["alertname"].as_str().unwrap_or(""), a["labels"]["source"].as_str().unwrap_or(""));
            if source == healthy {
                about_healthy.push(a.clone());
            } else if source != failing || !matches!(name, "DriftlessSourceFailing" | "DriftlessSourceNotSynced") {
                others.push(a.clone());
            }
        }
        let find = |name: &str, states: &[&str]| {
            alerts
                .iter()
                .find(|a| {
                    a["labels"]["alertname"] == name
                        && a["labels"]["source"] == failing.as_str()
                        && states.contains(&a["state"].as_str().unwrap_or(""))
                })
                .cloned()
        };
        if let (Some(f), Some(n)) = (find("DriftlessSourceFailing", &["firing"]), find("DriftlessSourceNotSynced", &["pending", "firing"]))
        {
            break (f, n);
        }
        assert!(
            Instant::now() < deadline,
            "DriftlessSourceFailing not firing (or DriftlessSourceNotSynced not pending) for {failing} within 60 s: {alerts:#?}\nrules: {:#?}\nagent log:\n{}",
            rule_health(&prom).await,
            tail(&r.agent.stderr(), 30)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    eprintln!("DriftlessSourceFailing fired {:?} after the source turned Failed", failed_at.elapsed());
    assert!(about_healthy.is_empty(), "alerts about the healthy source {healthy}: {about_healthy:#?}");
    assert!(others.is_empty(), "unexpected alerts: {others:#?}");

    // its labels and annotations, the templates expanded
    assert_eq!(firing["labels"]["severity"], "critical", "{firing:#}");
    assert_eq!(firing["labels"]["state"], "Failed", "{firing:#}");
    let summary = firing["annotations"]["summary"].as_str().unwrap_or_default();
    let description = firing["annotations"]["description"].as_str().unwrap_or_default();
    assert!(summary.contains(&failing) && !summary.contains("{{"), "{summary}");
    assert!(description.contains(&format!("driftless-{failing}")) && !description.contains("{{"), "{description}");
    assert_eq!(not_synced["labels"]["severity"], "warning", "{not_synced:#}");

    // both sources have the series the rule reads, the healthy one Synced
    for source in [&healthy, &failing] {
        for metric in ["driftless_last_in_sync_timestamp_seconds", "driftless_source_interval_seconds"] {
            let found = prom.query(&format!("{metric}{{source=\"{source}\"}}")).await.unwrap();
            assert_eq!(found.len(), 1, "{metric} of {source}: {found:?}");
        }
    }
    let state = prom.query(&format!("driftless_source_state{{source=\"{healthy}\"}} == 1")).await.unwrap();
    assert_eq!(state.len(), 1, "{state:?}");
    assert_eq!(state[0]["metric"]["state"], "Synced", "{state:?}");
    for (name, state, error) in rule_health(&prom).await {
        assert!(error.is_empty() && state == "ok", "{name}: {state} {error}");
    }
    eprintln!("the alert test took {:?}", started.elapsed());
    r.cleanup().await;
}
