//! What `driftless sync` and `driftless run` do with their arguments.

use std::collections::HashMap;
use std::io::Write;
use std::process::ExitCode;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::agent::SourceLoop;
use crate::cli::{ClusterArgs, Output, PlanArgs, PlanOutput, RunArgs, StatusArgs, SyncArgs};
use crate::cluster::fence::Fence;
use crate::cluster::{Cluster, ConnectOptions};
use crate::config::{self, Source};
use crate::leader::Elector;
use crate::live::watch::WatchHub;
use crate::render::helm::Helm;
use crate::render::kustomize::Kustomize;
use crate::render::Limits;
use crate::report::{Reason, Report, State};
use crate::status::metrics::Metrics;
use crate::status::{self, Events, LoopGuard, Shared, Telemetry};
use crate::sync::{self, Context};

/// Exit code of a usage or configuration error.
pub const EXIT_USAGE: u8 = 2;

async fn context(args: &ClusterArgs, fence: Fence) -> Result<Context, crate::Error> {
    let opts = ConnectOptions { allow_exec_plugins: args.allow_exec_plugins, fence, ..ConnectOptions::default() };
    let cluster = Cluster::connect_with(args.kubeconfig.as_deref(), &opts).await.map_err(|e| crate::Error::Config(e.to_string()))?;
    let cache_dir = args.cache_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("driftless"));
    Ok(Context {
        agent_namespace: args.inventory_namespace.clone(),
        cache_dir,
        instance: args.instance.clone(),
        limits: Limits::default(),
        kustomize: Kustomize::new(&args.kustomize),
        helm: Helm::new(&args.helm),
        watches: Arc::new(WatchHub::new(cluster.clone())),
        cluster,
    })
}

/// Prints a usage or configuration error; exit code 2.
fn usage_error(e: &str) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(EXIT_USAGE)
}

/// `driftless sync`: one reconcile, printed; 0 when synced, 1 otherwise, 2 for usage errors.
pub async fn sync(args: SyncArgs) -> ExitCode {
    let setup = async {
        let source = args.source.to_config(Duration::from_secs(60)).and_then(|c| c.validate_with(&args.source.fetch()))?;
        let ctx = context(&args.cluster, Fence::default()).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((source, ctx))
    };
    let (source, ctx) = match setup.await {
        Ok(s) => s,
        Err(e) => return usage_error(&e),
    };
    let report = sync::reconcile(&ctx, &source).await;
    let events = Events::new(&ctx.agent_namespace, None);
    status::publish_report(&ctx.cluster, Some(&events), &source.name, &ctx.agent_namespace, &report).await;
    print_report(&report, args.output);
    if report.state == State::Synced {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `driftless plan`: what a sync would do, written nowhere; the exit code says whether anything
/// is pending (see [`crate::preview::Preview::exit_code`]).
pub async fn plan(args: PlanArgs) -> ExitCode {
    let setup = async {
        let source = args.source.to_config(Duration::from_secs(60)).and_then(|c| c.validate_with(&args.source.fetch()))?;
        let mut ctx = context(&args.cluster, Fence::default()).await.map_err(|e| e.to_string())?;
        // a private cache, gone when the command ends, unless one was named
        let scratch = match &args.cluster.cache_dir {
            Some(_) => None,
            None => {
                let dir = tempfile::tempdir().map_err(|e| format!("cannot create a cache directory: {e}"))?;
                ctx.cache_dir = dir.path().to_path_buf();
                Some(dir)
            }
        };
        Ok::<_, String>((source, ctx, scratch))
    };
    let (source, ctx, _scratch) = match setup.await {
        Ok(s) => s,
        Err(e) => return usage_error(&e),
    };
    let preview = crate::preview::compare::preview(&ctx, &source).await;
    let text = match args.output {
        PlanOutput::Table => crate::preview::output::table(&preview),
        PlanOutput::Markdown => crate::preview::output::markdown(&preview),
        PlanOutput::Json => serde_json::to_string_pretty(&preview).unwrap_or_default() + "\n",
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    ExitCode::from(preview.exit_code())
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
                    let name = if c.id.namespace.is_empty() { c.id.name.clone() } else { format!("{}/{}", c.id.namespace, c.id.name) };
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
                State::Failed => format!("Failed ({}): {}", report.reason.map_or("", Reason::as_str), report.message),
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
    let setup = async {
        let sources = load_sources(&args)?;
        // with leader election, nothing is written until the lease is held
        let fence = if args.leader_elect { Fence::elected() } else { Fence::default() };
        let ctx = context(&args.cluster, fence.clone()).await.map_err(|e| e.to_string())?;
        Ok::<_, String>((sources, ctx, fence))
    };
    let (sources, ctx, fence) = match setup.await {
        Ok(s) => s,
        Err(e) => return usage_error(&e),
    };
    info!(sources = sources.len(), version = crate::VERSION, "driftless agent starting");
    if sources.is_empty() {
        warn!("the configuration lists no sources: serving health and metrics, reconciling nothing");
    }
    let mut metrics = Metrics::new();
    metrics.count_watches(ctx.watches.open_watches());
    let metrics = Arc::new(metrics);
    let telemetry = Telemetry {
        statuses: Default::default(),
        metrics: metrics.clone(),
        events: Some(Arc::new(Events::new(&ctx.agent_namespace, std::env::var("POD_NAME").ok()))),
        outbox: status::notify::Outbox::new(metrics),
    };
    let webhook_secrets = sources.iter().filter_map(|s| Some((s.name.clone(), s.webhook_secret_file.clone()?))).collect();
    let shared = Arc::new(Shared {
        statuses: telemetry.statuses.clone(),
        metrics: telemetry.metrics.clone(),
        triggers: Default::default(),
        webhook_secrets,
        rate_limits: Default::default(),
        refusal_limits: Default::default(),
        running: Arc::new(AtomicUsize::new(0)),
        expected_loops: AtomicUsize::new(0),
        leader_elect: args.leader_elect,
        agent_namespace: ctx.agent_namespace.clone(),
        recent_events: Some(status::page::recent::RecentEvents::new(ctx.cluster.clone())),
    });
    let (stop_tx, mut stop_server) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(status::http::serve(args.listen, shared.clone(), async move {
        let _ = stop_server.changed().await;
    }));
    let elector = args.leader_elect.then(|| {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| format!("driftless-{}", std::process::id()));
        Elector::new(ctx.cluster.client().clone(), &ctx.agent_namespace, &args.leader_election_lease, &identity)
    });
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);

    // Each pass is one leadership term (one pass without leader election).
    let exit = loop {
        if let Some(elector) = &elector {
            telemetry.metrics.leader.set(0);
            info!(identity = elector.identity(), "standing by for the lease");
            tokio::select! {
                _ = &mut shutdown => break ExitCode::SUCCESS,
                result = &mut server => break server_stopped(result),
                _ = elector.acquire(&fence) => {}
            }
        }
        telemetry.metrics.leader.set(1);
        let mut tasks = start_loops(&ctx, &sources, &telemetry, &shared);
        let lost = async {
            match &elector {
                Some(e) => e.hold(&fence).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = &mut shutdown => {
                // abort the in-flight work (a server-side apply either happened or did not),
                // then hand the lease over
                tasks.shutdown().await;
                if let Some(e) = &elector {
                    e.release().await;
                }
                break ExitCode::SUCCESS;
            }
            result = &mut server => {
                tasks.shutdown().await;
                break server_stopped(result);
            }
            _ = lost => {
                // stop writing at once: another replica may lead already
                tasks.shutdown().await;
                shared.expected_loops.store(0, Ordering::SeqCst);
                warn!("lost the lease; stopped writing");
            }
        }
    };
    telemetry.metrics.leader.set(0);
    info!("shutting down");
    // what is queued for the forge and the notification targets gets a few seconds to go out
    let _ = tokio::time::timeout(Duration::from_secs(5), telemetry.outbox.flush()).await;
    let _ = stop_tx.send(true);
    exit
}

/// Starts one loop per source; records their triggers for the webhooks.
fn start_loops(ctx: &Context, sources: &[Source], telemetry: &Telemetry, shared: &Arc<Shared>) -> tokio::task::JoinSet<()> {
    let mut tasks = tokio::task::JoinSet::new();
    let mut triggers = HashMap::new();
    for source in sources {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        triggers.insert(source.name.clone(), tx);
        let guard = LoopGuard::new(&shared.running);
        let (ctx, source, telemetry) = (ctx.clone(), source.clone(), telemetry.clone());
        let triggers = Arc::new(tokio::sync::Mutex::new(rx));
        tasks.spawn(async move {
            let _guard = guard;
            let parent = crate::inventory::applyset::parent_ref(&source.name, &ctx.agent_namespace);
            let run = || SourceLoop::new(ctx.clone(), source.clone(), telemetry.clone()).run(triggers.clone());
            let publish = |note: String| {
                let (cluster, events, parent) = (ctx.cluster.clone(), telemetry.events.clone(), parent.clone());
                async move {
                    if let Some(events) = events {
                        events.publish(&cluster, &parent, true, status::reasons::SYNC_FAILED, &note).await;
                    }
                }
            };
            crate::agent::supervise(&source.name, &telemetry, run, publish).await
        });
    }
    *shared.triggers.write().unwrap_or_else(|p| p.into_inner()) = triggers;
    shared.expected_loops.store(sources.len(), Ordering::SeqCst);
    tasks
}

fn server_stopped(result: Result<std::io::Result<()>, tokio::task::JoinError>) -> ExitCode {
    let why = match result {
        Ok(Err(e)) => e.to_string(),
        Ok(Ok(())) => "it exited".into(),
        Err(e) => e.to_string(),
    };
    eprintln!("error: the HTTP server stopped: {why}");
    ExitCode::FAILURE
}

/// `driftless status`: one line per source, from a running agent or from the cluster.
pub async fn status(args: StatusArgs) -> ExitCode {
    let rows = match &args.server {
        Some(url) => status::cli::from_server(url).await,
        None => match Cluster::connect_with(
            args.kubeconfig.as_deref(),
            &ConnectOptions { allow_exec_plugins: args.allow_exec_plugins, ..ConnectOptions::default() },
        )
        .await
        {
            Ok(cluster) => status::cli::from_cluster(&cluster, &args.inventory_namespace).await.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        },
    };
    match rows {
        Ok(rows) => {
            match args.output {
                Output::Table => print!("{}", status::cli::table(&rows)),
                Output::Json => println!("{}", serde_json::to_string_pretty(&rows).unwrap_or_default()),
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load_sources(args: &RunArgs) -> Result<Vec<Source>, String> {
    match &args.config {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            config::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
        }
        None => {
            let mut config = args.source.to_config(args.interval)?;
            config.webhook_secret_file = args.webhook_secret_file.clone();
            Ok(vec![config.validate_with(&args.source.fetch())?])
        }
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
