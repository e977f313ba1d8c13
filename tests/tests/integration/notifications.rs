//! Commit statuses and notifications from a running agent, received by loopback servers: the
//! forge's API (GitHub's request shape and authentication), a signed JSON webhook and a Slack
//! incoming webhook, through a good commit and a bad one that is rolled back.

use std::time::Duration;

use driftless_tests::agent::{configmap, dynamic_api, eventually_ok, get, AgentProcess, STUCK_DEPLOYMENT as STUCK};
use driftless_tests::receiver::{Received, Receiver};
use driftless_tests::{unique_name, GitFixture, TestNamespace};
use hmac::{Hmac, Mac};
use kube::api::{Patch, PatchParams};
use serde_json::{json, Value};

const TOKEN: &str = "ghp-test-token-never-logged";
const SECRET: &str = "webhook-secret-never-logged";
const SLACK_PATH: &str = "/services/T000/B000/slack-url-is-a-secret";

/// The commit statuses the forge got for `commit`, in order: (state, body).
fn statuses(forge: &Receiver, commit: &str) -> Vec<Received> {
    let path = format!("/api/v3/repos/acme/shop/statuses/{commit}");
    forge.received().into_iter().filter(|r| r.path == path).collect()
}

fn states(received: &[Received]) -> Vec<String> {
    received.iter().map(|r| r.json()["state"].as_str().unwrap_or_default().to_string()).collect()
}

/// The events of the webhook's notifications, with their commits.
fn webhook_events(hooks: &Receiver) -> Vec<(String, String)> {
    hooks
        .received()
        .iter()
        .filter(|r| r.path == "/hook")
        .map(|r| {
            let n = r.json();
            (n["event"].as_str().unwrap_or_default().to_string(), n["commit"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}

fn slack_texts(hooks: &Receiver) -> Vec<String> {
    hooks.received().iter().filter(|r| r.path == SLACK_PATH).map(|r| r.json()["text"].as_str().unwrap_or_default().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn commit_statuses_and_notifications_follow_a_good_commit_and_a_rolled_back_one() {
    let client = driftless_tests::client().await;
    let inventory = TestNamespace::new(&client, "notify-inv").await;
    let ns = TestNamespace::new(&client, "notify").await;
    let forge = Receiver::start().await;
    let hooks = Receiver::start().await;
    let files = tempfile::tempdir().unwrap();
    let file = |name: &str, content: &str| {
        let path = files.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.to_str().unwrap().to_string()
    };
    let repo = GitFixture::new();
    repo.write("settings.yaml", configmap("settings", "v1"));
    repo.write("keep.yaml", configmap("keep", "1"));
    let good = repo.commit("v1");
    let name = unique_name("notify");
    let entry = json!({
        "name": name, "repo": repo.url(), "namespace": ns.name(), "interval": "1s", "healthTimeout": "4s", "rollback": "onFailure",
        "commitStatus": {"provider": "github", "apiUrl": format!("{}/api/v3", forge.url()), "repository": "acme/shop",
                         "tokenFile": file("token", &format!("{TOKEN}\n"))},
        "notify": [
            {"type": "webhook", "urlFile": file("hook-url", &format!("{}/hook", hooks.url())), "secretFile": file("hook-secret", SECRET)},
            {"type": "slack", "urlFile": file("slack-url", &format!("{}{SLACK_PATH}", hooks.url())), "events": ["Synced", "RolledBack"]},
        ],
    });
    let config = file("driftless.yaml", &serde_json::to_string_pretty(&json!({ "sources": [entry] })).unwrap());
    let agent = AgentProcess::start(inventory.name(), &["--config", &config]).await;

    // the good commit: pending, then success once Healthy, in GitHub's shape
    let posted = eventually_ok(&agent, "success on the good commit", Duration::from_secs(60), || async {
        let posted = statuses(&forge, &good);
        if states(&posted) == ["pending", "success"] {
            Ok(posted)
        } else {
            Err(format!("{:?}", states(&posted)))
        }
    })
    .await;
    for status in &posted {
        assert_eq!(status.method, "POST");
        assert_eq!(status.headers.get("authorization").map(String::as_str), Some(format!("Bearer {TOKEN}").as_str()));
        assert_eq!(status.headers.get("accept").map(String::as_str), Some("application/vnd.github+json"));
        let body = status.json();
        assert_eq!(body["context"], format!("driftless/{name}"));
        let description = body["description"].as_str().unwrap_or_default();
        assert!(!description.is_empty() && description.len() <= 140 && !description.contains('\n'), "{description:?}");
    }
    eventually_ok(&agent, "Synced on the webhook and on Slack", Duration::from_secs(30), || async {
        let synced = webhook_events(&hooks).contains(&("Synced".to_string(), good.clone()));
        let slack = slack_texts(&hooks);
        if synced && slack.iter().any(|t| t.contains(&name) && t.contains("Synced")) {
            Ok(())
        } else {
            Err(format!("{:?} {slack:?}", webhook_events(&hooks)))
        }
    })
    .await;
    // every webhook body is signed with the secret, byte for byte
    for r in hooks.received().iter().filter(|r| r.path == "/hook") {
        let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
        mac.update(&r.body);
        let expected: String = mac.finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(r.headers.get("x-signature-256"), Some(&format!("sha256={expected}")));
        assert_eq!(r.headers.get("content-type").map(String::as_str), Some("application/json"));
    }

    // two edits of an owned object: both reverted, one DriftCorrected notification (rate-limited)
    let configmaps = dynamic_api(&client, "v1", "ConfigMap", "configmaps", ns.name());
    for edit in ["by-hand-1", "by-hand-2"] {
        let params = PatchParams { field_manager: Some("kubectl-edit".into()), ..PatchParams::default() };
        configmaps.patch("settings", &params, &Patch::Merge(json!({"data": {"value": edit}}))).await.unwrap();
        eventually_ok(&agent, "the edit reverted", Duration::from_secs(20), || async {
            let value = get(&configmaps, "settings").await.and_then(|o| o["data"]["value"].as_str().map(String::from));
            if value.as_deref() == Some("v1") {
                Ok(())
            } else {
                Err(format!("{value:?}"))
            }
        })
        .await;
    }
    let drift = |hooks: &Receiver| webhook_events(hooks).iter().filter(|(e, _)| e == "DriftCorrected").count();
    eventually_ok(&agent, "a DriftCorrected notification", Duration::from_secs(20), || async {
        if drift(&hooks) >= 1 {
            Ok(())
        } else {
            Err(format!("{:?}", webhook_events(&hooks)))
        }
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(drift(&hooks), 1, "one notification per object per 5 minutes: {:?}", webhook_events(&hooks));

    // a bad commit: its Deployment never becomes Available; the agent rolls back to the good one
    repo.write("settings.yaml", configmap("settings", "v2"));
    repo.write("stuck.yaml", STUCK);
    let bad = repo.commit("v2 with a stuck rollout");
    eventually_ok(&agent, "failure on the bad commit, HealthCheckFailed and RolledBack", Duration::from_secs(60), || async {
        let events = webhook_events(&hooks);
        let failed = states(&statuses(&forge, &bad)) == ["pending", "failure"];
        let health = events.contains(&("HealthCheckFailed".to_string(), bad.clone()));
        let rolled = events.contains(&("RolledBack".to_string(), bad.clone()));
        if failed && health && rolled {
            Ok(())
        } else {
            Err(format!("statuses {:?}; events {events:?}", states(&statuses(&forge, &bad))))
        }
    })
    .await;
    let failure = statuses(&forge, &bad).pop().unwrap().json();
    assert!(failure["description"].as_str().unwrap_or_default().starts_with("HealthCheckFailed"), "{failure}");
    let rolled_back: Value =
        hooks.received().iter().filter(|r| r.path == "/hook").map(Received::json).find(|n| n["event"] == "RolledBack").unwrap();
    let message = rolled_back["message"].as_str().unwrap_or_default();
    assert!(message.contains(&bad[..12]) && message.contains(&good[..12]), "both commits named: {message}");
    let slack = slack_texts(&hooks);
    assert!(slack.iter().any(|t| t.contains("RolledBack")), "{slack:?}");
    assert!(!slack.iter().any(|t| t.contains("HealthCheckFailed")), "Slack asked for Synced and RolledBack only: {slack:?}");
    assert_eq!(states(&statuses(&forge, &good)), ["pending", "success"], "the good commit's success is not posted again");

    // the token, the secret and the Slack URL never show; nothing failed to go out
    let (status, metrics) = (agent.get(&format!("/status/{name}")).await, agent.get("/metrics").await);
    for shown in [agent.stderr(), agent.stdout(), status.body.clone(), metrics.body.clone()] {
        for secret in [TOKEN, SECRET, "slack-url-is-a-secret"] {
            assert!(!shown.contains(secret), "{secret} shown");
        }
    }
    let failures: Vec<&str> = metrics.body.lines().filter(|l| l.starts_with("driftless_notification_failures_total{")).collect();
    assert_eq!(failures.len(), 3, "one series per provider: {failures:?}");
    assert!(failures.iter().all(|l| l.ends_with(" 0")), "{failures:?}");
    ns.cleanup().await;
    inventory.cleanup().await;
}
