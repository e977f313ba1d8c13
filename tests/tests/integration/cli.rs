//! The `driftless` binary's contract: version and help, `driftless sync` output (table and JSON),
//! exit codes (0 synced, 1 failed, 2 usage), and the source flags (--no-prune, --ref, --path,
//! --repo as a local path or a file:// URL), run as a user would against the local control plane.

use std::process::Command;

use driftless_tests::agent::{configmap, configmaps, driftless_bin, renderers, run_sync};
use driftless_tests::{client, repo_root, unique_name, GitFixture, TestNamespace};
use serde_json::Value;

/// Runs the binary with `args` only (no cluster flags); returns (exit code, stdout, stderr).
fn driftless(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(driftless_bin()).args(args).output().expect("driftless runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The object rows of a table report: (action, kind, namespace/name).
fn rows(stdout: &str) -> Vec<(String, String, String)> {
    stdout
        .lines()
        .filter(|l| !l.starts_with("ACTION") && !l.starts_with("source "))
        .map(|l| {
            let cols: Vec<&str> = l.split_whitespace().collect();
            assert!(cols.len() >= 3, "not an object row: {l:?}");
            (cols[0].to_string(), cols[1].to_string(), cols[2].to_string())
        })
        .collect()
}

/// The summary line of a table report.
fn summary(stdout: &str) -> &str {
    stdout.lines().last().filter(|l| l.starts_with("source ")).unwrap_or_else(|| panic!("no summary line in {stdout:?}"))
}

fn row(action: &str, ns: &str, name: &str) -> (String, String, String) {
    (action.into(), "ConfigMap".into(), format!("{ns}/{name}"))
}

#[test]
fn version_prints_name_and_version_and_the_renderers() {
    let out = Command::new(driftless_bin()).arg("--version").envs(renderers()).output().expect("driftless runs");
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.first().copied(), Some(format!("driftless {}", driftless::VERSION).as_str()), "{stdout}");
    // the versions tests/cluster/build pins, with the programs asked
    let pinned = |module: &str, dir: &str| {
        let gomod = std::fs::read_to_string(repo_root().join("tests/cluster").join(dir).join("go.mod")).unwrap();
        gomod.lines().find_map(|l| l.trim().strip_prefix("require ")?.strip_prefix(module)).map(|v| v.trim().to_string()).unwrap()
    };
    let [(_, kustomize), (_, helm)] = renderers();
    assert_eq!(
        &lines[1..],
        [
            format!("kustomize {} ({})", pinned("sigs.k8s.io/kustomize/kustomize/v5", "kustomize"), kustomize.display()),
            format!("helm {} ({})", pinned("helm.sh/helm/v3", "helm"), helm.display()),
        ]
    );
    // a missing renderer is named, not fatal
    let out =
        Command::new(driftless_bin()).args(["sync", "--version"]).env("DRIFTLESS_KUSTOMIZE", "/nonexistent/kustomize").output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    assert!(stdout.contains("driftless-sync ") && stdout.contains("kustomize unavailable (cannot run kustomize: "), "{stdout}");
}

#[test]
fn help_lists_the_commands() {
    let (code, stdout, _) = driftless(&["--help"]);
    assert_eq!(code, 0);
    let commands: Vec<&str> = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(commands.contains(&"sync") && commands.contains(&"run"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_prints_one_line_per_object_and_a_summary_with_the_commit() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cli-table").await;
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "1")).write("b.yaml", configmap("b", "1"));
    let commit = repo.commit("two config maps");
    let name = unique_name("cli-table");

    // when synced, then exit 0, a row per object and a summary naming the full commit
    let (code, stdout, stderr) = run_sync(&["--repo", &repo.url(), "--name", &name, "--namespace", ns.name()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(rows(&stdout), [row("created", ns.name(), "a"), row("created", ns.name(), "b")], "{stdout}");
    let line = summary(&stdout);
    assert!(line.contains(&name) && line.contains(&commit), "{line}");
    assert!(line.contains("2 created") && line.contains("Synced"), "{line}");
    assert_eq!(configmaps(&client, ns.name()).await.keys().collect::<Vec<_>>(), ["a", "b"]);

    // and again: the same commit, nothing to do
    let (code, stdout, _) = run_sync(&["--repo", &repo.url(), "--name", &name, "--namespace", ns.name()]);
    assert_eq!(code, 0);
    assert_eq!(rows(&stdout), [row("unchanged", ns.name(), "a"), row("unchanged", ns.name(), "b")], "{stdout}");
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sync_json_output_is_a_report() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cli-json").await;
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "1")).write("b.yaml", configmap("b", "1"));
    let commit = repo.commit("two config maps");
    let name = unique_name("cli-json");

    let (code, stdout, stderr) = run_sync(&["--repo", &repo.url(), "--name", &name, "--namespace", ns.name(), "-o", "json"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {stdout}"));
    assert_eq!(report["source"], name.as_str());
    assert_eq!(report["commit"], commit.as_str());
    assert_eq!(report["state"], "Synced");
    assert_eq!(report["reason"], "");
    let entries = report["changes"]["entries"].as_array().unwrap_or_else(|| panic!("changes.entries: {report}"));
    let got: Vec<(&str, &str, &str, &str)> = entries
        .iter()
        .map(|e| {
            (e["action"].as_str().unwrap(), e["kind"].as_str().unwrap(), e["namespace"].as_str().unwrap(), e["name"].as_str().unwrap())
        })
        .collect();
    assert_eq!(got, [("created", "ConfigMap", ns.name(), "a"), ("created", "ConfigMap", ns.name(), "b")]);
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_failing_sync_exits_1_with_the_reason_and_applies_nothing() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cli-fail").await;
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "1")).write("broken.yaml", "kind: ConfigMap\nmetadata: [\n");
    repo.commit("a broken file");
    let name = unique_name("cli-fail");

    let (code, stdout, stderr) = run_sync(&["--repo", &repo.url(), "--name", &name, "--namespace", ns.name()]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    let line = summary(&stdout);
    assert!(line.contains("Failed (RenderFailed)") && line.contains("broken.yaml"), "{line}");
    // the log, into a pipe: no colour codes
    assert!(stderr.contains("sync failed") && !stderr.contains('\u{1b}'), "{stderr:?}");
    assert!(configmaps(&client, ns.name()).await.is_empty(), "a.yaml was applied");

    // the JSON report says the same
    let (code, stdout, _) = run_sync(&["--repo", &repo.url(), "--name", &name, "--namespace", ns.name(), "-o", "json"]);
    assert_eq!(code, 1);
    let report: Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!((report["state"].as_str(), report["reason"].as_str()), (Some("Failed"), Some("RenderFailed")));
    assert!(report["message"].as_str().unwrap().contains("broken.yaml"), "{report}");
    ns.cleanup().await;
}

#[test]
fn usage_errors_exit_2() {
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "1"));
    repo.commit("a");

    // a missing --repo
    let (code, stdout, stderr) = run_sync(&["--name", "cli-usage"]);
    assert_eq!(code, 2, "{stdout}{stderr}");
    assert!(stderr.contains("--repo is required"), "{stderr}");
    // a missing --name
    let (code, _, stderr) = run_sync(&["--repo", &repo.url()]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--name is required"), "{stderr}");
    // --max-prune-percent out of range
    let (code, _, stderr) = run_sync(&["--repo", &repo.url(), "--name", "cli-usage", "--max-prune-percent", "101"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--max-prune-percent") && stderr.contains("101"), "{stderr}");
    // an unknown flag
    let (code, _, stderr) = run_sync(&["--repo", &repo.url(), "--name", "cli-usage", "--frobnicate"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--frobnicate"), "{stderr}");
    // an invalid source name
    let (code, _, stderr) = run_sync(&["--repo", &repo.url(), "--name", "Not_Valid"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("Not_Valid"), "{stderr}");
    // no subcommand
    let (code, _, _) = driftless(&[]);
    assert_eq!(code, 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn no_prune_leaves_a_removed_object_in_place() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cli-noprune").await;
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "1")).write("b.yaml", configmap("b", "1")).write("c.yaml", configmap("c", "1"));
    repo.commit("three");
    let name = unique_name("cli-noprune");
    let args = ["--repo", &repo.url(), "--name", &name, "--namespace", ns.name()];
    assert_eq!(run_sync(&args).0, 0);
    let before = configmaps(&client, ns.name()).await;

    // when c leaves git and the sync runs with --no-prune, then c stays, untouched
    repo.remove("c.yaml");
    repo.commit("drop c");
    let (code, stdout, stderr) = run_sync(&[&args[..], &["--no-prune"]].concat());
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(rows(&stdout), [row("unchanged", ns.name(), "a"), row("unchanged", ns.name(), "b")], "{stdout}");
    assert_eq!(configmaps(&client, ns.name()).await, before, "c was pruned or something was written");

    // and without it, c is pruned
    let (code, stdout, _) = run_sync(&args);
    assert_eq!(code, 0, "{stdout}");
    assert!(rows(&stdout).contains(&row("deleted", ns.name(), "c")), "{stdout}");
    driftless_tests::agent::eventually("c to be deleted", || async { !configmaps(&client, ns.name()).await.contains_key("c") }).await;
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn ref_selects_a_tag_and_path_selects_a_subdirectory() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cli-ref").await;
    let repo = GitFixture::new();
    repo.write("apps/a.yaml", configmap("a", "1")).write("other/x.yaml", configmap("x", "1"));
    let v1 = repo.commit("v1");
    repo.tag("v1");
    repo.write("apps/b.yaml", configmap("b", "1"));
    let head = repo.commit("v2");

    // --ref v1 --path apps: only a, at v1's commit
    let name = unique_name("cli-ref");
    let (code, stdout, stderr) =
        run_sync(&["--repo", &repo.url(), "--name", &name, "--namespace", ns.name(), "--ref", "v1", "--path", "apps"]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(rows(&stdout), [row("created", ns.name(), "a")], "{stdout}");
    assert!(summary(&stdout).contains(&v1), "{stdout}");
    assert_eq!(configmaps(&client, ns.name()).await.keys().collect::<Vec<_>>(), ["a"]);

    // without --ref: main's head, so b too; other/ is still outside --path
    let (code, stdout, _) = run_sync(&["--repo", &repo.url(), "--name", &name, "--namespace", ns.name(), "--path", "apps"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(rows(&stdout), [row("unchanged", ns.name(), "a"), row("created", ns.name(), "b")], "{stdout}");
    assert!(summary(&stdout).contains(&head), "{stdout}");
    assert_eq!(configmaps(&client, ns.name()).await.keys().collect::<Vec<_>>(), ["a", "b"]);

    // a ref that does not exist: exit 1, FetchFailed naming it
    let (code, stdout, _) = run_sync(&["--repo", &repo.url(), "--name", &name, "--namespace", ns.name(), "--ref", "v9"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(summary(&stdout).contains("Failed (FetchFailed)") && summary(&stdout).contains("v9"), "{stdout}");
    ns.cleanup().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn repo_may_be_a_local_path_or_a_file_url() {
    let client = client().await;
    let ns = TestNamespace::new(&client, "cli-local").await;
    let repo = GitFixture::new();
    repo.write("a.yaml", configmap("a", "1"));
    let commit = repo.commit("a");
    let name = unique_name("cli-local");
    let path = repo.path().to_str().unwrap().to_string();
    assert!(!path.contains("://"));

    // a plain path
    let (code, stdout, stderr) = run_sync(&["--repo", &path, "--name", &name, "--namespace", ns.name()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(rows(&stdout), [row("created", ns.name(), "a")], "{stdout}");
    assert!(summary(&stdout).contains(&commit));

    // the file:// URL of the same repository: the same source, nothing to do
    let url = repo.url();
    assert!(url.starts_with("file://"));
    let (code, stdout, stderr) = run_sync(&["--repo", &url, "--name", &name, "--namespace", ns.name()]);
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert_eq!(rows(&stdout), [row("unchanged", ns.name(), "a")], "{stdout}");
    assert!(summary(&stdout).contains(&commit));
    ns.cleanup().await;
}
