//! Driftless: a GitOps reconciliation agent.
//!
//! One revision flows through the stages in this order; each module is one stage. No two
//! top-level modules depend on each other (`scripts/check-module-cycles`).
//!
//! | stage      | module        | what it does                                                            |
//! |------------|---------------|-------------------------------------------------------------------------|
//! | source     | [`source`]    | git2: check the remote ref, fetch, read the tree from the object database |
//! | render     | [`render`]    | YAML/JSON documents to objects, with limits                             |
//! | plan       | [`plan`]      | discovery data, namespaces, ordering, waves, hashes, prune set (pure)   |
//! | live state | [`live`]      | the live objects a reconcile reads; watches of owned objects: drift, self-heal, health |
//! | apply      | [`apply`]     | server-side dry-run of the whole revision, then server-side apply in waves |
//! | prune      | [`inventory`] | the ApplySet inventory, and safeguarded deletion ([`inventory::prune`]) |
//! | reconcile  | [`sync`]      | the stages above, in order, for one source                              |
//! | preview    | [`preview`]   | what a sync would do, written nowhere: diffs, prunes, waves (`driftless plan`) |
//! | status     | [`status`]    | HTTP (health, metrics, status, webhooks), Events, `driftless status`     |
//!
//! Shared by the stages: [`manifest`] (the object model, which depends on nothing) and [`cluster`]
//! (the Kubernetes client: one file per verb, throttled and fenced, which knows only the object
//! model). [`report`] holds what a reconcile did and why it failed ([`report::Reason`]), read by
//! the reconcile, the agent and status. [`agent`] runs the stages for each source in `driftless run`, under
//! [`leader`] election; [`config`] holds the sources' settings, [`cli`] and [`commands`] the
//! command line.

// Unsafe code only where an allow names it, each block with its SAFETY reason.
#![deny(unsafe_code)]
#![warn(rust_2018_idioms, clippy::undocumented_unsafe_blocks)]

pub mod agent;
pub mod apply;
pub mod cli;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod inventory;
pub mod leader;
pub mod live;
pub mod manifest;
pub mod plan;
pub mod preview;
pub mod render;
pub mod report;
pub mod source;
pub mod status;
pub mod sync;

/// The version reported by `driftless --version` and in the user agent.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// The field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "driftless";

/// Annotations and labels Driftless reads or writes.
pub mod keys {
    /// What every Driftless annotation starts with.
    pub const PREFIX: &str = "driftless.dev/";
    /// Recorded on every applied object: sha256 of the normalized desired object.
    pub const DESIRED_HASH: &str = "driftless.dev/desired-hash";
    /// `"true"`: an object whose immutable fields changed is deleted and created again.
    pub const RECREATE: &str = "driftless.dev/recreate";
    /// `disabled`: the live object is never pruned.
    pub const PRUNE: &str = "driftless.dev/prune";
    /// Integer wave (default 0).
    pub const WAVE: &str = "driftless.dev/wave";
    /// The source that applied an object.
    pub const SOURCE: &str = "driftless.dev/source";
    /// On an ApplySet parent: objects of other sources' sets that this source's revision declares
    /// (a JSON list of `[group, kind, namespace, name]`), to be handed over once theirs does not.
    pub const CLAIMS: &str = "driftless.dev/claims";
    /// On an ApplySet parent: the Driftless install that owns it (`--instance`).
    pub const INSTANCE: &str = "driftless.dev/instance";
    /// ApplySet (KEP-3659) keys.
    pub const APPLYSET_ID: &str = "applyset.kubernetes.io/id";
    pub const APPLYSET_PART_OF: &str = "applyset.kubernetes.io/part-of";
    pub const APPLYSET_TOOLING: &str = "applyset.kubernetes.io/tooling";
    pub const APPLYSET_GROUP_KINDS: &str = "applyset.kubernetes.io/contains-group-kinds";
    pub const APPLYSET_NAMESPACES: &str = "applyset.kubernetes.io/additional-namespaces";

    /// Annotations on an ApplySet parent that tell a source's status to `kubectl` users.
    pub const REVISION: &str = "driftless.dev/revision";
    pub const STATE: &str = "driftless.dev/state";
    pub const HEALTH: &str = "driftless.dev/health";
    pub const MESSAGE: &str = "driftless.dev/message";
    pub const LAST_SYNC: &str = "driftless.dev/last-sync-time";
    /// What rendered the recorded revision: `plain`, `kustomize v5.8.2`, `helm v3.22.0`.
    pub const RENDERER: &str = "driftless.dev/renderer";
}

/// Why a reconcile failed. Each stage maps its own errors to its own variant; status, Events and
/// metrics read [`Error::reason`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Checking the remote ref, fetching or reading the commit failed.
    #[error("fetch failed: {0}")]
    Fetch(#[from] source::SourceError),
    /// Files could not be turned into objects.
    #[error("render failed: {0}")]
    Render(#[from] render::RenderError),
    /// The plan, the live state or the server-side dry-run rejected the revision.
    #[error("validation failed: {0}")]
    Validation(String),
    /// Listing the set's members failed (which kind, where, and why).
    #[error("validation failed: {0}")]
    Members(#[source] inventory::ListError),
    /// Reading a desired object's live state failed.
    #[error("validation failed: {0}")]
    LiveObject(#[source] live::object::ReadError),
    /// A server-side apply failed.
    #[error("apply failed: {0}")]
    Apply(String),
    /// A wave did not become Healthy within the source's health timeout.
    #[error("health check failed: {0}")]
    HealthCheck(String),
    /// A newer commit arrived while a wave waited for health.
    #[error("superseded by a newer commit while waiting for health")]
    Superseded,
    /// Pruning failed.
    #[error("prune failed: {0}")]
    Prune(String),
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A stage's CPU-bound work (render, plan) panicked: a bug, reported as the loop's own panics are.
    #[error("panicked: {0}")]
    Panicked(String),
    /// A request a stage made failed: the stage's reason, what it was doing, the API's error.
    #[error("{doing}: {}", cluster::api_message(.source))]
    Request {
        reason: report::Reason,
        doing: &'static str,
        #[source]
        source: kube::Error,
    },
}

impl Error {
    /// The bounded reason, shared by status, Events and metric labels.
    pub fn reason(&self) -> report::Reason {
        use report::Reason;
        match self {
            Error::Fetch(_) => Reason::FetchFailed,
            Error::Render(_) => Reason::RenderFailed,
            Error::Validation(_) | Error::Members(_) | Error::LiveObject(_) => Reason::ValidationFailed,
            Error::Panicked(_) => Reason::Panicked,
            Error::Apply(_) => Reason::ApplyFailed,
            Error::HealthCheck(_) => Reason::HealthCheckFailed,
            Error::Superseded => Reason::Superseded,
            Error::Prune(_) => Reason::PruneFailed,
            Error::Config(_) => Reason::ConfigInvalid,
            Error::Request { reason, .. } => *reason,
        }
    }

    /// A stage's request failed: its reason and what it was doing.
    pub fn request(reason: report::Reason, doing: &'static str) -> impl FnOnce(kube::Error) -> Error {
        move |source| Error::Request { reason, doing, source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
