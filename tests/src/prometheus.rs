//! A real Prometheus server for tests (Debian's `prometheus` package, `/usr/bin/prometheus`):
//! it scrapes targets on loopback every second, evaluates its rule files every second, keeps its
//! data in a temporary directory, and is killed when dropped. Queried through its HTTP API
//! (`/api/v1/query`, `/api/v1/alerts`, `/api/v1/rules`, `/api/v1/targets`) with
//! [`crate::agent::http_request`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tempfile::TempDir;

use crate::agent::{free_port, http_request, tail};

/// The `prometheus` binary: `$DRIFTLESS_PROMETHEUS`, else `/usr/bin/prometheus`.
pub fn prometheus_bin() -> PathBuf {
    std::env::var_os("DRIFTLESS_PROMETHEUS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
}

/// The `promtool` binary: `$DRIFTLESS_PROMTOOL`, else `/usr/bin/promtool`.
pub fn promtool_bin() -> PathBuf {
    std::env::var_os("DRIFTLESS_PROMTOOL").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/usr/bin/promtool"))
}

/// `promtool check rules <file>`: Ok with its output, or Err with its output.
pub fn check_rules(file: &Path) -> Result<String, String> {
    let out = Command::new(promtool_bin())
        .args(["check", "rules"])
        .arg(file)
        .output()
        .unwrap_or_else(|e| panic!("{} runs (Debian package prometheus): {e}", promtool_bin().display()));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(text)
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986's unreserved characters).
pub fn urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// A running Prometheus server, killed when dropped.
pub struct Prometheus {
    child: Child,
    dir: TempDir,
    /// Where its HTTP API listens.
    pub addr: SocketAddr,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, scraping `/metrics` of each of `targets`
    /// every second (job `driftless`) and evaluating the rules of `rule_files` every second;
    /// waits until it is ready. Panics with its log if it exits or does not get ready.
    pub async fn start(targets: &[SocketAddr], rule_files: &[PathBuf]) -> Self {
        let mut last = String::new();
        // the free port may be taken before Prometheus binds it: try again on another
        for _ in 0..3 {
            let mut p = Self::spawn(targets, rule_files);
            match p.wait_ready(Duration::from_secs(30)).await {
                Ok(()) => return p,
                Err(e) => {
                    last = e;
                    if !last.contains("address already in use") {
                        break;
                    }
                }
            }
        }
        panic!("prometheus did not get ready: {last}");
    }

    fn spawn(targets: &[SocketAddr], rule_files: &[PathBuf]) -> Self {
        let dir = TempDir::new().expect("a temporary directory");
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("an address");
        let config = serde_json::json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": rule_files.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
            "scrape_configs": [{
                "job_name": "driftless",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": targets.iter().map(ToString::to_string).collect::<Vec<_>>()}],
            }],
        });
        // JSON is YAML
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, serde_json::to_string_pretty(&config).expect("JSON")).expect("write prometheus.yml");
        let log = std::fs::File::create(dir.path().join("log")).expect("a log file");
        let child = Command::new(prometheus_bin())
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .arg("--log.level=info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("{} starts (Debian package prometheus): {e}", prometheus_bin().display()));
        Prometheus { child, dir, addr }
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return Err(format!("it exited with {status}:\n{}", tail(&self.log(), 30)));
            }
            if tokio::net::TcpStream::connect(self.addr).await.is_ok() && self.get("/-/ready").await.0 == 200 {
                return Ok(());
            }
            if std::time::Instant::now() > deadline {
                return Err(format!("not ready on {} after {timeout:?}:\n{}", self.addr, tail(&self.log(), 30)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Its log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// `GET path`: status and body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let r = http_request(self.addr, "GET", path, &[], b"").await;
        (r.status, r.body)
    }

    /// `GET /api/v1/<path>`: its `data`, or the error Prometheus gave.
    pub async fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = self.get(&format!("/api/v1/{path}")).await;
        let v: Value = serde_json::from_str(&body).map_err(|e| format!("HTTP {status}, not JSON ({e}): {body}"))?;
        if status != 200 || v["status"] != "success" {
            return Err(format!("HTTP {status}: {}: {}", v["errorType"], v["error"]));
        }
        Ok(v["data"].clone())
    }

    /// An instant query of `expr` now: the samples of its vector result (each `{metric, value:
    /// [time, "value"]}`), or Prometheus' error (a scalar result is one sample without labels).
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self.api(&format!("query?query={}", urlencode(expr))).await?;
        match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => Ok(data["result"].as_array().cloned().unwrap_or_default()),
            Some("scalar") | Some("string") => Ok(vec![serde_json::json!({"metric": {}, "value": data["result"]})]),
            other => Err(format!("unexpected result type {other:?}: {data}")),
        }
    }

    /// The alerts now pending or firing (`/api/v1/alerts`).
    pub async fn alerts(&self) -> Vec<Value> {
        let data = self.api("alerts").await.unwrap_or_else(|e| panic!("/api/v1/alerts: {e}"));
        data["alerts"].as_array().cloned().unwrap_or_default()
    }

    /// The rule groups loaded, with each rule's health and last evaluation (`/api/v1/rules`).
    pub async fn rule_groups(&self) -> Vec<Value> {
        let data = self.api("rules").await.unwrap_or_else(|e| panic!("/api/v1/rules: {e}"));
        data["groups"].as_array().cloned().unwrap_or_default()
    }

    /// The scrape targets and their health (`/api/v1/targets`).
    pub async fn targets(&self) -> Vec<Value> {
        let data = self.api("targets").await.unwrap_or_else(|e| panic!("/api/v1/targets: {e}"));
        data["activeTargets"].as_array().cloned().unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The numeric value of a query sample (`value: [time, "1.5"]`); NaN and ±Inf as Prometheus
/// spells them.
pub fn sample_value(sample: &Value) -> Option<f64> {
    match sample["value"][1].as_str()? {
        "NaN" => Some(f64::NAN),
        "+Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        v => v.parse().ok(),
    }
}
