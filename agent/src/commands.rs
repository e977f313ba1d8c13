//! What `driftless sync` and `driftless run` do with their arguments.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use tracing::info;

use crate::agent::{SourceLoop, Statuses};
use crate::apply::Cluster;
use crate::cli::{ClusterArgs, Output, RunArgs, SyncArgs};
use crate::config::{self, Source};
use crate::render::Limits;
use crate::sync::{self, Context, Report, State};

/// Exit code of a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

async fn context(args: &ClusterArgs) -> Result<Context, crate::Error> {
    let cluster = Cluster::connect(args.kubeconfig.as_deref()).await?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("driftless"));
    Ok(Context { cluster, agent_namespace: args.inventory_namespace.clone(), cache_dir, limits: Limits::default() })
}

/// `driftless sync`: one reconcile, printed; 0 when synced, 1 otherwise, 2 for usage errors.
pub async fn sync(args: SyncArgs) -> ExitCode {
    let source = match args.source.to_config(Duration::from_secs(60)).and_then(|c| c.validate()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let ctx = match context(&args.cluster).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let report = sync::reconcile(&ctx, &source).await;
    print_report(&report, args.output);
    if report.state == State::Synced {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Prints a report as a table (one line per object, then a summary) or as JSON.
pub fn print_report(report: &Report, output: Output) {
    let mut out = std::io::stdout().lock();
    match output {
        Output::Json => {
            let _ = writeln!(out, "{}", serde_json::to_string_pretty(report).unwrap_or_default());
        }
        Output::Table => {
            let rows: Vec<(String, String, String)> = report
                .changes
                .entries
                .iter()
                .map(|c| {
                    let name = if c.id.namespace.is_empty() {
                        c.id.name.clone()
                    } else {
                        format!("{}/{}", c.id.namespace, c.id.name)
                    };
                    let name = if c.message.is_empty() { name } else { format!("{name}  ({})", c.message) };
                    (c.action.as_str().to_string(), c.id.group_kind().to_string(), name)
                })
                .collect();
            if !rows.is_empty() {
                let kind_width = rows.iter().map(|r| r.1.len()).max().unwrap_or(4).max(4);
                let _ = writeln!(out, "{:<10} {:<kind_width$} NAMESPACE/NAME", "ACTION", "KIND");
                for (action, kind, name) in &rows {
                    let _ = writeln!(out, "{action:<10} {kind:<kind_width$} {name}");
                }
            }
            let commit = report.commit.as_deref().unwrap_or("-");
            let state = match report.state {
                State::Synced => "Synced".to_string(),
                State::PruneHeld => format!("PruneHeld: {}", report.message),
                State::Failed => format!("Failed ({}): {}", report.reason, report.message),
            };
            let _ = writeln!(
                out,
                "source {} at commit {}: {}; {} in {:.1}s",
                report.source,
                commit,
                report.changes.summary(),
                state,
                report.duration.as_secs_f64()
            );
        }
    }
}

/// `driftless run`: every source on its own task and interval, until SIGTERM or Ctrl-C.
pub async fn run(args: RunArgs) -> ExitCode {
    let sources = match load_sources(&args) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    let ctx = match context(&args.cluster).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    info!(sources = sources.len(), version = crate::VERSION, "driftless agent starting");
    let statuses: Statuses = Default::default();
    let mut tasks = tokio::task::JoinSet::new();
    let mut triggers = Vec::new();
    for source in sources {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        triggers.push((source.name.clone(), tx));
        let source_loop = SourceLoop::new(ctx.clone(), source, statuses.clone());
        tasks.spawn(source_loop.run(rx));
    }
    shutdown_signal().await;
    info!("shutting down");
    tasks.abort_all();
    ExitCode::SUCCESS
}

fn load_sources(args: &RunArgs) -> Result<Vec<Source>, String> {
    match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => Ok(vec![args.source.to_config(args.interval)?.validate()?]),
    }
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
