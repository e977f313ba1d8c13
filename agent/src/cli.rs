//! The command line: `driftless sync` (one reconcile), `driftless run` (the agent loop) and
//! `driftless status` (each source's state, from a running agent or from the cluster).

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::config::{AuthConfig, SourceConfig};

/// `--version`: the agent's, then the renderers' it would run (`DRIFTLESS_KUSTOMIZE`,
/// `DRIFTLESS_HELM`, or `kustomize` and `helm` on PATH), each asked in its sandbox.
pub fn version_with_tools() -> String {
    let program = |env: &str, name: &str| std::env::var(env).unwrap_or_else(|_| name.to_string());
    let kustomize = crate::render::kustomize::Kustomize::new(&program("DRIFTLESS_KUSTOMIZE", "kustomize"));
    let helm = crate::render::helm::Helm::new(&program("DRIFTLESS_HELM", "helm"));
    format!(
        "{}\nkustomize {} ({})\nhelm {} ({})",
        env!("CARGO_PKG_VERSION"),
        kustomize.version,
        kustomize.program.display(),
        helm.version,
        helm.program.display()
    )
}

/// A GitOps reconciliation agent: git manifests become live Kubernetes state.
#[derive(Debug, Parser)]
#[command(name = "driftless", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    #[command(flatten)]
    pub global: Global,
}

#[derive(Debug, Args)]
pub struct Global {
    /// Log format.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "DRIFTLESS_LOG_FORMAT")]
    pub log_format: LogFormat,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Reconcile one source once, print what changed, and exit (0 synced, 1 failed, 2 usage).
    Sync(SyncArgs),
    /// Run the agent: reconcile every source on its interval until stopped.
    Run(RunArgs),
    /// Show each source's revision, state and health, from a running agent or the cluster.
    Status(StatusArgs),
    /// Show what a sync would do (creates, updates with diffs, prunes, waves) without writing
    /// anything: reads and server-side dry-runs only (0 nothing to do, 1 changes pending,
    /// 2 usage, 3 the revision fails).
    Plan(PlanArgs),
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Output format: a table with diffs, JSON, or Markdown for a pull request comment.
    #[arg(short = 'o', long, value_enum, default_value_t = PlanOutput::Table)]
    pub output: PlanOutput,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum PlanOutput {
    Table,
    Json,
    Markdown,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A running agent's address (http://host:port); without it, read the ApplySet parents in
    /// the cluster.
    #[arg(long)]
    pub server: Option<String>,
    /// Kubeconfig file (when reading the cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Run the kubeconfig's exec credential plugin, if its user has one (refused otherwise).
    #[arg(long)]
    pub allow_exec_plugins: bool,
    /// Namespace of the ApplySet parents (the agent's own; POD_NAMESPACE when set).
    #[arg(long, env = "POD_NAMESPACE", default_value = "driftless-system")]
    pub inventory_namespace: String,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// Where the agent keeps its state and talks to.
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: KUBECONFIG / ~/.kube/config, then the in-cluster config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Run the kubeconfig's exec credential plugin, if its user has one (refused otherwise: it
    /// runs a program the kubeconfig names). The in-cluster configuration needs none.
    #[arg(long)]
    pub allow_exec_plugins: bool,
    /// Namespace of the ApplySet parents (the agent's own; POD_NAMESPACE when set).
    #[arg(long, env = "POD_NAMESPACE", default_value = "driftless-system")]
    pub inventory_namespace: String,
    /// Directory of the bare git caches.
    #[arg(long, env = "DRIFTLESS_CACHE_DIR")]
    pub cache_dir: Option<PathBuf>,
    /// Name of this install, recorded on its ApplySet parents: a source of another install with
    /// the same name in the same inventory namespace is refused instead of sharing its set.
    #[arg(long, env = "DRIFTLESS_INSTANCE", default_value = "driftless")]
    pub instance: String,
    /// The kustomize program that builds kustomizations (looked up in PATH unless it has a `/`).
    #[arg(long, env = "DRIFTLESS_KUSTOMIZE", default_value = "kustomize")]
    pub kustomize: String,
    /// The helm program that renders charts (looked up in PATH unless it has a `/`).
    #[arg(long, env = "DRIFTLESS_HELM", default_value = "helm")]
    pub helm: String,
}

/// One source given by flags.
#[derive(Debug, Args)]
pub struct SourceArgs {
    /// Repository: https://, ssh://, file:// URL or a local path.
    #[arg(long)]
    pub repo: Option<String>,
    /// Branch, tag or full commit SHA (default: the remote's HEAD).
    #[arg(long = "ref")]
    pub reference: Option<String>,
    /// Directory inside the repository (default: its root).
    #[arg(long, default_value = "")]
    pub path: String,
    /// Name of the source and its inventory.
    #[arg(long)]
    pub name: Option<String>,
    /// Namespace for namespaced objects that set none.
    #[arg(long, default_value = "default")]
    pub namespace: String,
    /// Do not prune objects removed from git.
    #[arg(long)]
    pub no_prune: bool,
    /// Allow a revision with no objects to prune every member.
    #[arg(long)]
    pub allow_empty: bool,
    /// Hold a prune that would delete more than this percentage of the set.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(0..=100))]
    pub max_prune_percent: u32,
    /// A protected kind this source may prune (Namespace, PersistentVolumeClaim,
    /// CustomResourceDefinition); repeatable.
    #[arg(long = "prunable")]
    pub prunable: Vec<String>,
    /// Report drift without correcting it (`run`).
    #[arg(long)]
    pub no_self_heal: bool,
    /// How long each wave may take to become Healthy.
    #[arg(long, default_value = "5m", value_parser = humantime::parse_duration)]
    pub health_timeout: Duration,
    /// How the source path becomes objects: auto (a kustomization is built with kustomize, a
    /// Chart.yaml rendered with helm, anything else read as plain files), plain, kustomize or helm.
    #[arg(long, default_value = "auto")]
    pub render: crate::source::RenderMode,
    /// Let a kustomization's remote bases and resources through (kustomize fetches them).
    #[arg(long)]
    pub allow_remote_bases: bool,
    /// How long a render (kustomize build, helm template) may take.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    pub render_timeout: Duration,
    /// Release name of the chart at the path (default: --name).
    #[arg(long)]
    pub helm_release: Option<String>,
    /// A values file of the chart, relative to the chart directory; repeatable, later files win.
    #[arg(long = "helm-values")]
    pub helm_values: Vec<String>,
    /// Let helm download the chart's dependencies that are not vendored in its charts/.
    #[arg(long)]
    pub helm_allow_dependency_downloads: bool,
    /// on-failure: roll a revision that fails midway or fails its health check back to the
    /// last one that was Synced and Healthy (`run`).
    #[arg(long, value_enum, default_value = "never")]
    pub rollback: crate::config::Rollback,
    /// Longest one remote check or one fetch may take.
    #[arg(long = "fetch-timeout", default_value = "60s", value_parser = humantime::parse_duration)]
    pub fetch_timeout: Duration,
    /// Most bytes one fetch may download.
    #[arg(long, default_value_t = crate::source::DEFAULT_MAX_FETCH_BYTES)]
    pub max_fetch_bytes: u64,
    /// Permit credentials over plain http:// (they travel unencrypted).
    #[arg(long)]
    pub insecure_http: bool,
    /// File holding an HTTPS token (sent as the password of --username, default `git`).
    #[arg(long)]
    pub token_file: Option<PathBuf>,
    /// Username for --token-file.
    #[arg(long)]
    pub username: Option<String>,
    /// Files holding HTTPS basic credentials.
    #[arg(long)]
    pub username_file: Option<PathBuf>,
    #[arg(long)]
    pub password_file: Option<PathBuf>,
    /// SSH private key file.
    #[arg(long)]
    pub ssh_key_file: Option<PathBuf>,
    /// known_hosts file, mandatory for SSH.
    #[arg(long)]
    pub known_hosts_file: Option<PathBuf>,
}

impl SourceArgs {
    /// The source these flags describe; `interval` only matters for `run`.
    pub fn to_config(&self, interval: Duration) -> Result<SourceConfig, String> {
        let repo = self.repo.clone().ok_or("--repo is required")?;
        let name = self.name.clone().ok_or("--name is required")?;
        Ok(SourceConfig {
            name,
            repo,
            reference: self.reference.clone(),
            path: self.path.clone(),
            namespace: self.namespace.clone(),
            interval,
            prune: !self.no_prune,
            auth: AuthConfig {
                token_file: self.token_file.clone(),
                username: self.username.clone(),
                username_file: self.username_file.clone(),
                password_file: self.password_file.clone(),
                ssh_key_file: self.ssh_key_file.clone(),
                known_hosts_file: self.known_hosts_file.clone(),
                passphrase_file: None,
            },
            allow_empty: self.allow_empty,
            max_prune_percent: self.max_prune_percent,
            prunable: self.prunable.clone(),
            self_heal: !self.no_self_heal,
            health_timeout: self.health_timeout,
            webhook_secret_file: None,
            render: self.render,
            allow_remote_bases: self.allow_remote_bases,
            render_timeout: self.render_timeout,
            helm: crate::render::helm::Release {
                release: self.helm_release.clone(),
                values_files: self.helm_values.clone(),
                values: serde_json::Map::new(),
                allow_dependency_downloads: self.helm_allow_dependency_downloads,
            },
            rollback: self.rollback,
            commit_status: None,
            notify: Vec::new(),
        })
    }

    /// How the source's remote is fetched.
    pub fn fetch(&self) -> crate::config::FetchConfig {
        crate::config::FetchConfig { timeout: self.fetch_timeout, max_fetch_bytes: self.max_fetch_bytes, insecure_http: self.insecure_http }
    }
}

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = Output::Table)]
    pub output: Output,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Config file listing the sources; without it, one source is taken from the flags.
    #[arg(long, env = "DRIFTLESS_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Poll interval of a source given by flags.
    #[arg(long, default_value = "1m", value_parser = humantime::parse_duration)]
    pub interval: Duration,
    /// File holding the webhook secret of a source given by flags.
    #[arg(long)]
    pub webhook_secret_file: Option<PathBuf>,
    /// Compete for a Lease in the agent's namespace; only the leader writes (for replicas > 1).
    #[arg(long)]
    pub leader_elect: bool,
    /// Name of that Lease.
    #[arg(long, default_value = "driftless")]
    pub leader_election_lease: String,
    /// Address of the health, metrics, status and webhook server.
    #[arg(long, env = "DRIFTLESS_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: std::net::SocketAddr,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sync_flags_parse_into_a_source() {
        let cli = Cli::try_parse_from([
            "driftless",
            "sync",
            "--repo",
            "/tmp/r",
            "--name",
            "shop",
            "--ref",
            "main",
            "--path",
            "apps",
            "--namespace",
            "shop",
            "--no-prune",
            "-o",
            "json",
        ])
        .unwrap();
        let Command::Sync(args) = cli.command else { panic!("not sync") };
        assert_eq!(args.output, Output::Json);
        let cfg = args.source.to_config(Duration::from_secs(60)).unwrap();
        assert_eq!(cfg.name, "shop");
        assert!(!cfg.prune);
        assert_eq!(cfg.reference.as_deref(), Some("main"));
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn a_missing_repo_or_name_is_reported() {
        let cli = Cli::try_parse_from(["driftless", "sync", "--name", "x"]).unwrap();
        let Command::Sync(args) = cli.command else { panic!("not sync") };
        assert!(args.source.to_config(Duration::from_secs(1)).unwrap_err().contains("--repo"));
    }

    #[test]
    fn max_prune_percent_is_bounded() {
        assert!(Cli::try_parse_from(["driftless", "sync", "--max-prune-percent", "101"]).is_err());
    }
}
