//! `driftless plan` on the real control plane: what a sync would do (creates, updates with
//! diffs, prunes, held prunes, invalid objects), with Secret values never shown, and nothing
//! written (the audit log shows only reads and dry-runs).

use driftless_tests::agent::{audit_events, configmap, is_dry_run, is_write, run_plan, run_sync, AGENT_NAMESPACE};
use driftless_tests::{unique_name, GitFixture, TestNamespace};
use serde_json::Value;

const OLD_PASSWORD: &str = "hunter2-old-password";
const NEW_PASSWORD: &str = "hunter2-new-password";

fn secret(password: &str) -> String {
    format!("apiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  password: \"{password}\"\n  username: app\n")
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// Every request of Driftless since `since` about `namespace`, the source's parent, or the
/// inventory namespace (and what is in it, unless it is the tests' shared one).
fn requests_since(since: usize, namespace: &str, inventory: &str, source: &str) -> Vec<Value> {
    let parent = format!("driftless-{source}");
    audit_events()
        .into_iter()
        .skip(since)
        .filter(|e| e["userAgent"].as_str().is_some_and(|u| u.starts_with("driftless/")))
        .filter(|e| {
            let r = &e["objectRef"];
            // the shared inventory namespace holds other tests' parents: only a fresh one counts whole
            let in_inventory = inventory != AGENT_NAMESPACE && r["namespace"] == inventory;
            r["namespace"] == namespace || in_inventory || r["name"] == parent.as_str() || r["name"] == inventory
        })
        .collect()
}

/// The action the plan gives an object, by kind and name.
fn action_of(plan: &Value, kind: &str, name: &str) -> Option<String> {
    plan["objects"]
        .as_array()?
        .iter()
        .find(|o| o["object"]["kind"] == kind && o["object"]["name"] == name)
        .and_then(|o| o["action"].as_str().map(String::from))
}

fn diff_of(plan: &Value, kind: &str, name: &str) -> String {
    plan["objects"]
        .as_array()
        .and_then(|all| all.iter().find(|o| o["object"]["kind"] == kind && o["object"]["name"] == name))
        .and_then(|o| o["diff"].as_str())
        .unwrap_or_default()
        .to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_before_any_agent_shows_creates_and_writes_nothing() {
    let client = driftless_tests::client().await;
    let ns = TestNamespace::new(&client, "plan-fresh").await;
    let repo = GitFixture::new();
    repo.write("settings.yaml", configmap("settings", "v1"));
    repo.write("creds.yaml", secret(OLD_PASSWORD));
    repo.commit("first");
    // no agent ever ran here: the inventory namespace does not even exist
    let inventory = unique_name("plan-inventory");
    let source = unique_name("fresh");
    let since = audit_events().len();
    let path = repo.path().to_str().unwrap().to_string();
    let (code, out, err) = run_plan(&inventory, &["--repo", &path, "--name", &source, "--namespace", ns.name(), "-o", "json"]);
    assert_eq!(code, 1, "changes pending: {out}\n{err}");
    let plan: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(action_of(&plan, "ConfigMap", "settings").as_deref(), Some("create"), "{out}");
    assert_eq!(action_of(&plan, "Secret", "creds").as_deref(), Some("create"), "{out}");
    assert!(diff_of(&plan, "ConfigMap", "settings").contains("+  value: v1"), "{out}");
    for shown in [&out, &err] {
        assert!(!shown.contains(OLD_PASSWORD) && !shown.contains(&b64(OLD_PASSWORD)), "a Secret value shown: {shown}");
    }

    let requests = requests_since(since, ns.name(), &inventory, &source);
    let writes: Vec<&Value> = requests.iter().filter(|e| is_write(e)).collect();
    assert!(writes.is_empty(), "plan wrote: {writes:#?}");
    assert!(requests.iter().filter(|e| is_dry_run(e)).count() >= 2, "every object dry-run: {requests:#?}");
    let (code, _, err) = run_plan(&inventory, &["--repo", &path, "--namespace", ns.name()]);
    assert_eq!(code, 2, "a usage error (no --name): {err}");
    let namespaces = driftless_tests::agent::dynamic_api(&client, "v1", "Namespace", "namespaces", "");
    assert!(driftless_tests::agent::get(&namespaces, &inventory).await.is_none(), "the inventory namespace was not created");
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_plan_after_a_sync_shows_updates_prunes_and_hides_secret_values() {
    let client = driftless_tests::client().await;
    let ns = TestNamespace::new(&client, "plan-change").await;
    let repo = GitFixture::new();
    repo.write("settings.yaml", configmap("settings", "v1"));
    repo.write("keep.yaml", configmap("keep", "1"));
    repo.write("gone.yaml", configmap("gone", "1"));
    repo.write("other.yaml", configmap("other", "1"));
    repo.write("creds.yaml", secret(OLD_PASSWORD));
    repo.commit("first");
    let source = unique_name("change");
    let path = repo.path().to_str().unwrap().to_string();
    let args = ["--repo", path.as_str(), "--name", source.as_str(), "--namespace", ns.name()];
    let (code, out, err) = run_sync(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, _) = run_plan(AGENT_NAMESPACE, &[&args[..], &["-o", "json"]].concat());
    assert_eq!(code, 0, "nothing to do right after a sync: {out}");

    // git changes: an update, a Secret's new password, a file removed, one added
    repo.write("settings.yaml", configmap("settings", "v2"));
    repo.write("creds.yaml", secret(NEW_PASSWORD));
    repo.remove("gone.yaml");
    repo.write("added.yaml", configmap("added", "1"));
    repo.commit("second");
    let since = audit_events().len();
    let (code, out, err) = run_plan(AGENT_NAMESPACE, &[&args[..], &["-o", "json"]].concat());
    assert_eq!(code, 1, "{out}\n{err}");
    let plan: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert_eq!(action_of(&plan, "ConfigMap", "settings").as_deref(), Some("update"));
    let settings = diff_of(&plan, "ConfigMap", "settings");
    assert!(settings.contains("-  value: v1") && settings.contains("+  value: v2"), "{settings}");
    assert_eq!(action_of(&plan, "ConfigMap", "keep").as_deref(), Some("unchanged"));
    assert_eq!(action_of(&plan, "ConfigMap", "added").as_deref(), Some("create"));
    assert_eq!(action_of(&plan, "Secret", "creds").as_deref(), Some("update"));
    let creds = diff_of(&plan, "Secret", "creds");
    assert!(creds.contains("password") && creds.contains("(changed value)"), "a changed key reads as changed: {creds}");
    let prunes: Vec<(String, String)> = plan["prunes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["object"]["name"].as_str().unwrap_or_default().to_string(), p["action"].as_str().unwrap_or_default().to_string()))
        .collect();
    assert_eq!(prunes, [("gone".to_string(), "delete".to_string())]);

    let (code, table, _) = run_plan(AGENT_NAMESPACE, &args);
    assert_eq!(code, 1);
    assert!(table.contains("1 to create, 2 to update") && table.contains("1 to prune"), "{table}");
    let (code, markdown, _) = run_plan(AGENT_NAMESPACE, &[&args[..], &["-o", "markdown"]].concat());
    assert_eq!(code, 1);
    assert!(markdown.contains("<details>") && markdown.contains("```diff"), "{markdown}");
    for shown in [&out, &table, &markdown] {
        for value in [OLD_PASSWORD, NEW_PASSWORD] {
            assert!(!shown.contains(value) && !shown.contains(&b64(value)), "a Secret value shown: {shown}");
        }
    }
    let writes: Vec<Value> = requests_since(since, ns.name(), AGENT_NAMESPACE, &source).into_iter().filter(is_write).collect();
    assert!(writes.is_empty(), "plan wrote: {writes:#?}");
    let live = driftless_tests::agent::configmaps(&client, ns.name()).await;
    assert!(live.contains_key("gone") && !live.contains_key("added"), "the cluster is as the sync left it: {live:?}");

    // a safeguard's hold, and an invalid object: the revision fails (exit 3)
    let (code, out, _) = run_plan(AGENT_NAMESPACE, &[&args[..], &["--max-prune-percent", "10", "-o", "json"]].concat());
    assert_eq!(code, 1, "{out}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(plan["prunes"][0]["action"], "held", "{out}");
    assert!(plan["held"].as_str().unwrap_or_default().contains("maxPrunePercent"), "{out}");
    repo.write("bad.yaml", "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: bad\ndatta:\n  value: x\n");
    repo.commit("a typo");
    let (code, out, _) = run_plan(AGENT_NAMESPACE, &[&args[..], &["-o", "json"]].concat());
    assert_eq!(code, 3, "{out}");
    let plan: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(action_of(&plan, "ConfigMap", "bad").as_deref(), Some("invalid"), "{out}");
    let bad = plan["objects"].as_array().unwrap().iter().find(|o| o["object"]["name"] == "bad").unwrap();
    assert!(bad["message"].as_str().unwrap_or_default().contains("bad.yaml"), "the file named: {bad}");
    ns.cleanup().await;
}
