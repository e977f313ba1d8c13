//! What Driftless sends out after a sync: commit statuses on the forge ([`forge`]) and
//! notifications to webhooks and Slack ([`hook`]), through one outbound client ([`http`]).
//!
//! A sync never waits for them: [`Outbox`] queues each item (a bounded queue; a full one drops
//! the item and counts it as a failure) for one background task, which sends them in order,
//! one at a time. A delivery is retried with backoff on network errors, 429 and 5xx, not on
//! other answers. A commit status equal to the last one posted for the same source and commit
//! is not posted again. Each failure (after its retries) counts in
//! `driftless_notification_failures_total{source,provider}` and logs one warning; neither ever
//! carries a token, a secret or a URL past `scheme://host`.

pub mod forge;
pub mod hook;
pub mod http;

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use super::metrics::Metrics;
use forge::{CommitState, CommitStatusConfig};
use hook::{Notification, NotifyConfig, NotifyType};
use http::{HttpClient, HttpError, Timeouts};

/// How many items may wait for the background task.
pub const QUEUE: usize = 1024;
/// How many (source, commit) pairs the last posted state is remembered for.
pub const RECENT_STATUSES: usize = 512;
/// The waits before each retry: 4 attempts in all, at most 4 × 10 s + 7 s per item.
pub const RETRY_DELAYS: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(4)];

/// How the outbox sends: timeouts, retries and queue size (shorter in tests).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Settings {
    pub timeouts: Timeouts,
    /// One retry per delay, after waiting it.
    pub retry_delays: Vec<Duration>,
    pub queue: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { timeouts: Timeouts::default(), retry_delays: RETRY_DELAYS.to_vec(), queue: QUEUE }
    }
}

/// Why an item was not delivered. Paths are shown, never what the files hold.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    /// A token, URL or secret file could not be read.
    #[error("reading the {what} file {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A token, URL or secret file is empty.
    #[error("the {what} file {} is empty", path.display())]
    Empty { what: &'static str, path: PathBuf },
    /// Sending failed.
    #[error(transparent)]
    Http(#[from] HttpError),
    /// The queue was full: the item was dropped.
    #[error("the queue of outbound notifications is full: dropped")]
    QueueFull,
}

impl DeliveryError {
    /// Whether trying again may help (see [`HttpError::retryable`]).
    pub fn retryable(&self) -> bool {
        matches!(self, DeliveryError::Http(e) if e.retryable())
    }
}

/// The provider label of each configured target: what [`Metrics::zero_series`] takes.
pub fn providers(commit_status: Option<&CommitStatusConfig>, notify: &[NotifyConfig]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = commit_status.map(|c| c.provider.as_str()).into_iter().collect();
    for target in notify {
        if !out.contains(&target.kind.as_str()) {
            out.push(target.kind.as_str());
        }
    }
    out
}

/// One item of the queue.
enum Item {
    Status {
        source: String,
        cfg: CommitStatusConfig,
        commit: String,
        state: CommitState,
        description: String,
    },
    Notify {
        source: String,
        target: NotifyConfig,
        notification: Notification,
    },
    /// Answered once every item queued before it is done.
    Flush(oneshot::Sender<()>),
}

/// The handle of the background sender. Cheap to clone; the task ends when every handle is
/// dropped (after what is queued).
#[derive(Clone)]
pub struct Outbox {
    queue: Option<(mpsc::Sender<Item>, Arc<Metrics>)>,
}

impl Outbox {
    /// Starts the background task with the default [`Settings`]. Must be called in a Tokio runtime.
    pub fn new(metrics: Arc<Metrics>) -> Outbox {
        Outbox::with_settings(metrics, Settings::default())
    }

    /// Starts the background task with these settings. Must be called in a Tokio runtime.
    pub fn with_settings(metrics: Arc<Metrics>, settings: Settings) -> Outbox {
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let client = HttpClient::new(settings.timeouts);
        tokio::spawn(run(rx, client, metrics.clone(), settings.retry_delays));
        Outbox { queue: Some((tx, metrics)) }
    }

    /// An outbox that sends nothing (no task, nothing counted).
    pub fn disabled() -> Outbox {
        Outbox { queue: None }
    }

    /// Queues a commit status; never waits.
    pub fn post_status(&self, source: &str, cfg: &CommitStatusConfig, commit: &str, state: CommitState, description: String) {
        let item = Item::Status { source: source.into(), cfg: cfg.clone(), commit: commit.into(), state, description };
        self.enqueue(source, cfg.provider.as_str(), item);
    }

    /// Queues `n` for each target that wants its event; never waits.
    pub fn notify(&self, source: &str, targets: &[NotifyConfig], n: Notification) {
        for target in targets.iter().filter(|t| t.wants(n.event)) {
            let item = Item::Notify { source: source.into(), target: target.clone(), notification: n.clone() };
            self.enqueue(source, target.kind.as_str(), item);
        }
    }

    /// Waits until everything queued before this call was delivered or given up (shutdown, tests).
    pub async fn flush(&self) {
        let Some((tx, _)) = &self.queue else { return };
        let (done, wait) = oneshot::channel();
        if tx.send(Item::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }

    fn enqueue(&self, source: &str, provider: &'static str, item: Item) {
        let Some((tx, metrics)) = &self.queue else { return };
        if tx.try_send(item).is_err() {
            failed(metrics, source, provider, &DeliveryError::QueueFull);
        }
    }
}

/// Counts and logs one undelivered item (the error shows no secret).
fn failed(metrics: &Metrics, source: &str, provider: &str, e: &DeliveryError) {
    metrics.notification_failures_total.get_or_create(&Metrics::provider(source, provider)).inc();
    warn!(source, provider, error = %e, "could not deliver a commit status or notification");
}

/// The last state posted per (source, commit), for a bounded number of pairs.
#[derive(Default)]
struct Recent {
    last: HashMap<(String, String), CommitState>,
    order: VecDeque<(String, String)>,
}

impl Recent {
    fn is_posted(&self, source: &str, commit: &str, state: CommitState) -> bool {
        self.last.get(&(source.to_string(), commit.to_string())) == Some(&state)
    }

    fn record(&mut self, source: &str, commit: &str, state: CommitState) {
        let key = (source.to_string(), commit.to_string());
        if self.last.insert(key.clone(), state).is_none() {
            self.order.push_back(key);
            while self.order.len() > RECENT_STATUSES {
                if let Some(old) = self.order.pop_front() {
                    self.last.remove(&old);
                }
            }
        }
    }
}

/// The background task: each item in order, with its retries.
async fn run(mut rx: mpsc::Receiver<Item>, client: HttpClient, metrics: Arc<Metrics>, delays: Vec<Duration>) {
    let mut recent = Recent::default();
    while let Some(item) = rx.recv().await {
        let (source, provider, result) = match item {
            Item::Flush(done) => {
                let _ = done.send(());
                continue;
            }
            Item::Status { source, cfg, commit, state, description } => {
                // the same state as last posted for this commit: nothing to say
                if recent.is_posted(&source, &commit, state) {
                    continue;
                }
                let result = retried(&delays, || deliver_status(&client, &source, &cfg, &commit, state, &description)).await;
                if result.is_ok() {
                    recent.record(&source, &commit, state);
                }
                (source, cfg.provider.as_str(), result)
            }
            Item::Notify { source, target, notification } => {
                let result = retried(&delays, || deliver_notification(&client, &target, &notification)).await;
                (source, target.kind.as_str(), result)
            }
        };
        match result {
            Ok(()) => {
                metrics.notifications_sent_total.get_or_create(&Metrics::provider(&source, provider)).inc();
            }
            Err(e) => failed(&metrics, &source, provider, &e),
        }
    }
}

/// `attempt`, then once more after each delay while the error is retryable.
async fn retried<F, Fut>(delays: &[Duration], mut attempt: F) -> Result<(), DeliveryError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), DeliveryError>>,
{
    let mut delays = delays.iter();
    loop {
        match attempt().await {
            Err(e) if e.retryable() => match delays.next() {
                Some(delay) => tokio::time::sleep(*delay).await,
                None => return Err(e),
            },
            result => return result,
        }
    }
}

/// A file's trimmed text: a token, URL or secret (read at each attempt, so it can rotate).
async fn read_secret(what: &'static str, path: &Path) -> Result<String, DeliveryError> {
    let text = tokio::fs::read_to_string(path).await.map_err(|source| DeliveryError::Read { what, path: path.into(), source })?;
    let text = text.trim();
    if text.is_empty() {
        return Err(DeliveryError::Empty { what, path: path.into() });
    }
    Ok(text.to_string())
}

/// One attempt at posting a commit status.
async fn deliver_status(
    client: &HttpClient,
    source: &str,
    cfg: &CommitStatusConfig,
    commit: &str,
    state: CommitState,
    description: &str,
) -> Result<(), DeliveryError> {
    let token = read_secret("token", &cfg.token_file).await?;
    let request = forge::status_request(cfg, &token, source, commit, state, description)?;
    client.send(request).await?;
    Ok(())
}

/// One attempt at sending a notification.
async fn deliver_notification(client: &HttpClient, target: &NotifyConfig, n: &Notification) -> Result<(), DeliveryError> {
    let url = read_secret("URL", &target.url_file).await?;
    let request = match target.kind {
        NotifyType::Webhook => {
            let secret = match &target.secret_file {
                Some(path) => Some(read_secret("secret", path).await?),
                None => None,
            };
            hook::webhook_request(&url, secret.as_deref().map(str::as_bytes), n, SystemTime::now())?
        }
        NotifyType::Slack => hook::slack_request(&url, n),
    };
    client.send(request).await?;
    Ok(())
}

#[cfg(test)]
mod tests;
