//! The Grafana dashboard of the chart (`helm/dashboards/driftless.json`): its panels and the
//! PromQL expressions of their targets, for the tests that check them against the agent's
//! metrics and against a real Prometheus.

use std::path::PathBuf;

use serde_json::Value;

use crate::repo_root;

/// `helm/dashboards/driftless.json`.
pub fn dashboard_path() -> PathBuf {
    repo_root().join("helm/dashboards/driftless.json")
}

/// The dashboard as JSON (panics if it is missing or not JSON).
pub fn load_dashboard() -> Value {
    let text = std::fs::read_to_string(dashboard_path()).expect("helm/dashboards/driftless.json exists");
    serde_json::from_str(&text).expect("the dashboard is valid JSON")
}

/// Every panel, rows' nested panels included.
pub fn all_panels(dashboard: &Value) -> Vec<&Value> {
    fn walk<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for p in panels.as_array().into_iter().flatten() {
            out.push(p);
            walk(&p["panels"], out);
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], &mut out);
    out
}

/// The PromQL expression of every panel target, each named `<panel title> / <refId>`.
pub fn dashboard_queries(dashboard: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in all_panels(dashboard) {
        for t in p["targets"].as_array().into_iter().flatten() {
            if let Some(expr) = t["expr"].as_str() {
                out.push((format!("{} / {}", p["title"].as_str().unwrap_or("?"), t["refId"].as_str().unwrap_or("?")), expr.to_string()));
            }
        }
    }
    out
}
