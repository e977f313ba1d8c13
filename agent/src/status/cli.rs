//! `driftless status`: one line per source (name, revision, state, health, age, message), from
//! a running agent's `/status`, or from the ApplySet parents in the cluster when no agent URL is
//! given.

use std::time::{Duration, SystemTime};

use serde::Serialize;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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

/// Rows from a running agent's status API (`http://host:port`).
pub async fn from_server(url: &str) -> Result<Vec<Row>, String> {
    let body = http_get(url, "/status").await?;
    let sources: Vec<Value> = serde_json::from_str(&body).map_err(|e| format!("{url}/status is not a status list: {e}"))?;
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default().as_secs();
    Ok(sources
        .iter()
        .map(|s| {
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            Row {
                name: text(&s["name"]),
                revision: s["lastAppliedCommit"].as_str().map(|c| crate::source::short(c).to_string()).unwrap_or_default(),
                state: text(&s["state"]),
                health: text(&s["health"]),
                age_seconds: s["lastSyncTime"].as_u64().map(|t| now.saturating_sub(t)),
                message: text(&s["message"]),
            }
        })
        .collect())
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

/// Seconds since an RFC 3339 UTC time written by [`super::rfc3339`].
fn age_of(t: &str) -> Option<u64> {
    let now = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).ok()?.as_secs();
    // parse YYYY-MM-DDTHH:MM:SSZ
    let b = t.as_bytes();
    if b.len() != 20 || b[10] != b'T' || b[19] != b'Z' {
        return None;
    }
    let n = |r: std::ops::Range<usize>| t.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (n(0..4)?, n(5..7)?, n(8..10)?);
    let (hh, mm, ss) = (n(11..13)?, n(14..16)?, n(17..19)?);
    // days-from-civil (Howard Hinnant's algorithm)
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let then = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(now.saturating_sub(then.max(0) as u64))
}

/// A plain HTTP/1.1 GET against the agent's own server (http:// only).
async fn http_get(url: &str, path: &str) -> Result<String, String> {
    let rest = url.strip_prefix("http://").ok_or_else(|| format!("--server must be an http:// URL, got {url}"))?;
    let host = rest.trim_end_matches('/');
    let mut stream = tokio::time::timeout(Duration::from_secs(10), tokio::net::TcpStream::connect(host))
        .await
        .map_err(|_| format!("{url}: connection timed out"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nAccept: application/json\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.map_err(|e| format!("{url}: {e}"))?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut response))
        .await
        .map_err(|_| format!("{url}: no answer"))?
        .map_err(|e| format!("{url}: {e}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").ok_or_else(|| format!("{url}: malformed answer"))?;
    let status = head.split_whitespace().nth(1).unwrap_or_default();
    if status != "200" {
        return Err(format!("{url}{path}: HTTP {status}"));
    }
    Ok(body.to_string())
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
