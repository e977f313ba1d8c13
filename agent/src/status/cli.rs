//! `driftless status`: one line per source (name, revision, state, health, age, message), from
//! a running agent's `/status`, or from the ApplySet parents in the cluster when no agent URL is
//! given.

use std::time::{Duration, SystemTime};

use k8s_openapi::jiff::Timestamp;
use serde::Serialize;

use super::model::SourceStatus;
use crate::cluster::Cluster;
use crate::keys;
use crate::manifest::ResourceType;

/// One source as `driftless status` prints it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    pub revision: String,
    pub state: String,
    pub health: String,
    /// Seconds since the last sync.
    pub age_seconds: Option<u64>,
    pub message: String,
}

/// How long `driftless status --server` waits for the agent to connect and to answer.
const SERVER_TIMEOUT: Duration = Duration::from_secs(10);

/// Rows from a running agent's status API (`http://host:port`), read with the same HTTP client
/// as the cluster's, into the status model the agent serves.
pub async fn from_server(url: &str) -> Result<Vec<Row>, String> {
    let sources = get_status(url).await?;
    let now = SystemTime::now();
    Ok(sources
        .into_iter()
        .map(|s| Row {
            name: s.name,
            revision: s.last_applied_commit.as_deref().map(|c| crate::source::short(c).to_string()).unwrap_or_default(),
            state: s.state.as_str().to_string(),
            health: s.health.as_str().to_string(),
            age_seconds: s.last_sync_time.map(|t| now.duration_since(t).unwrap_or_default().as_secs()),
            message: s.message,
        })
        .collect())
}

/// `GET /status` of the agent at `url`.
async fn get_status(url: &str) -> Result<Vec<SourceStatus>, String> {
    if !url.starts_with("http://") {
        return Err(format!("--server must be an http:// URL, got {url}"));
    }
    let uri: http::Uri = url.parse().map_err(|e| format!("--server {url}: {e}"))?;
    let mut config = kube::Config::new(uri);
    config.connect_timeout = Some(SERVER_TIMEOUT);
    config.read_timeout = Some(SERVER_TIMEOUT);
    let client = kube::Client::try_from(config).map_err(|e| format!("{url}: {e}"))?;
    let request =
        http::Request::get("/status").header(http::header::ACCEPT, "application/json").body(Vec::new()).map_err(|e| e.to_string())?;
    let answer = tokio::time::timeout(SERVER_TIMEOUT * 2, client.request::<Vec<SourceStatus>>(request)).await;
    answer.map_err(|_| format!("{url}/status: no answer"))?.map_err(|e| format!("{url}/status: {e}"))
}

/// Rows from the ApplySet parents in the agent's namespace.
pub async fn from_cluster(cluster: &Cluster, namespace: &str) -> Result<Vec<Row>, kube::Error> {
    let cm = ResourceType::config_maps();
    let parents = cluster.list(&cm, namespace, &format!("app.kubernetes.io/managed-by=driftless,{}", keys::APPLYSET_ID)).await?;
    let mut rows: Vec<Row> = parents
        .iter()
        .map(|p| {
            let ann = &p["metadata"]["annotations"];
            let text = |k: &str| ann[k].as_str().unwrap_or_default().to_string();
            let name = p["metadata"]["name"].as_str().unwrap_or_default();
            Row {
                name: name.strip_prefix("driftless-").unwrap_or(name).to_string(),
                revision: ann[keys::REVISION].as_str().map(|c| crate::source::short(c).to_string()).unwrap_or_default(),
                state: text(keys::STATE),
                health: text(keys::HEALTH),
                age_seconds: ann[keys::LAST_SYNC].as_str().and_then(age_of),
                message: text(keys::MESSAGE),
            }
        })
        .collect();
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

/// The table: a header and one line per source.
pub fn table(rows: &[Row]) -> String {
    let mut lines = vec![["NAME", "REVISION", "STATE", "HEALTH", "AGE", "MESSAGE"].map(String::from).to_vec()];
    for r in rows {
        let age = r.age_seconds.map(|s| human(Duration::from_secs(s))).unwrap_or_else(|| "-".into());
        let dash = |s: &str| if s.is_empty() { "-".to_string() } else { s.to_string() };
        lines.push(vec![r.name.clone(), dash(&r.revision), dash(&r.state), dash(&r.health), age, r.message.clone()]);
    }
    let widths: Vec<usize> = (0..5).map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0)).collect();
    lines
        .iter()
        .map(|l| {
            let mut s = String::new();
            for (i, w) in widths.iter().enumerate() {
                s.push_str(&format!("{:<w$}   ", l[i]));
            }
            s.push_str(&l[5]);
            s.trim_end().to_string() + "\n"
        })
        .collect()
}

/// `5s`, `3m`, `2h`, `4d`.
pub fn human(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Seconds since an RFC 3339 time (as [`super::rfc3339`] writes it).
fn age_of(t: &str) -> Option<u64> {
    let then = t.parse::<Timestamp>().ok()?;
    let age = Timestamp::now().duration_since(then);
    Some(u64::try_from(age.as_secs()).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_back_what_rfc3339_wrote() {
        let then = SystemTime::now() - Duration::from_secs(125);
        let age = age_of(&super::super::rfc3339(then)).unwrap();
        assert!((124..=127).contains(&age), "{age}");
        assert_eq!(age_of("yesterday"), None);
    }

    #[test]
    fn the_table_aligns_columns() {
        let rows = vec![
            Row {
                name: "shop".into(),
                revision: "abc".into(),
                state: "Synced".into(),
                health: "Healthy".into(),
                age_seconds: Some(5),
                message: String::new(),
            },
            Row {
                name: "payments-prod".into(),
                revision: String::new(),
                state: "Failed".into(),
                health: String::new(),
                age_seconds: None,
                message: "fetch failed".into(),
            },
        ];
        let t = table(&rows);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME"));
        assert!(lines[1].starts_with("shop ") && lines[1].contains("Synced") && lines[1].contains("5s"));
        assert!(lines[2].contains("fetch failed") && lines[2].contains(" - "));
        let col = lines[0].find("REVISION").unwrap();
        assert_eq!(lines[1].find("abc").unwrap(), col);
    }

    #[test]
    fn human_durations() {
        assert_eq!(human(Duration::from_secs(5)), "5s");
        assert_eq!(human(Duration::from_secs(600)), "10m");
        assert_eq!(human(Duration::from_secs(3 * 3600)), "3h");
        assert_eq!(human(Duration::from_secs(5 * 86_400)), "5d");
    }
}
