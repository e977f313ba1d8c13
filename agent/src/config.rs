//! Settings of the sources an agent reconciles: from a YAML config file (`driftless run
//! --config`) or from flags for a single source.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::manifest::GroupKind;
use crate::render::helm::{valid_release, Release};
use crate::source::{Auth, RenderMode, SourceSpec, DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_FETCH_BYTES};

/// The agent's config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigFile {
    pub sources: Vec<SourceEntry>,
}

/// One entry of `sources`: the source and how its remote is fetched, written side by side in
/// one mapping. Two structs so that [`SourceConfig`] stays what the `sync`/`run` flags fill in
/// (a source given by flags fetches with the [`FetchConfig`] defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct SourceEntry {
    pub source: SourceConfig,
    pub fetch: FetchConfig,
}

impl<'de> Deserialize<'de> for SourceEntry {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let mut fields = serde_json::Map::deserialize(d)?;
        let fetch: serde_json::Map<String, serde_json::Value> =
            FetchConfig::KEYS.iter().filter_map(|key| fields.remove_entry(*key)).collect();
        let fetch = FetchConfig::deserialize(serde_json::Value::Object(fetch)).map_err(D::Error::custom)?;
        let source = SourceConfig::deserialize(serde_json::Value::Object(fields)).map_err(D::Error::custom)?;
        Ok(SourceEntry { source, fetch })
    }
}

/// How a source's remote is fetched: bounds on time and size, plain http.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FetchConfig {
    /// Longest one remote check or one fetch may take, e.g. `60s`, `2m`. Also bounds how long
    /// libgit2 waits to connect and for each answer (process-wide: the smallest of all sources).
    #[serde(default = "default_fetch_timeout", deserialize_with = "fetch_timeout")]
    pub timeout: Duration,
    /// Most bytes one fetch may download; a bigger pack fails the fetch.
    #[serde(default = "default_max_fetch_bytes")]
    pub max_fetch_bytes: u64,
    /// Permit credentials over plain `http://` (they travel unencrypted).
    #[serde(default)]
    pub insecure_http: bool,
}

impl FetchConfig {
    /// Its keys in a source's mapping.
    const KEYS: [&'static str; 3] = ["timeout", "maxFetchBytes", "insecureHttp"];
}

impl Default for FetchConfig {
    fn default() -> Self {
        Self { timeout: default_fetch_timeout(), max_fetch_bytes: default_max_fetch_bytes(), insecure_http: false }
    }
}

/// One source as written in the config file.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SourceConfig {
    pub name: String,
    pub repo: String,
    #[serde(default, rename = "ref")]
    pub reference: Option<String>,
    #[serde(default)]
    pub path: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Poll interval, e.g. `1m`, `30s` (jittered by up to 10%).
    #[serde(default = "default_interval", with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(default = "yes")]
    pub prune: bool,
    #[serde(default)]
    pub auth: AuthConfig,
    /// Permit a revision that renders no objects to prune every member.
    #[serde(default)]
    pub allow_empty: bool,
    /// Hold a prune that would delete more than this share of the set.
    #[serde(default = "default_max_prune_percent")]
    pub max_prune_percent: u32,
    /// Protected kinds (Namespace, CustomResourceDefinition, PersistentVolumeClaim) this source
    /// may prune, written `Kind` or `Kind.group`.
    #[serde(default)]
    pub prunable: Vec<String>,
    /// Correct drift of owned objects (`driftless run`); false only reports it.
    #[serde(default = "yes")]
    pub self_heal: bool,
    /// File holding the secret that signs this source's push webhooks (`POST /hooks/<name>`).
    #[serde(default)]
    pub webhook_secret_file: Option<PathBuf>,
    /// How long a wave may take to become Healthy before the sync fails (HealthCheckFailed).
    #[serde(default = "default_health_timeout", with = "humantime_serde_compat")]
    pub health_timeout: Duration,
    /// How the source path becomes objects: `auto` (a kustomization is built with kustomize, a
    /// `Chart.yaml` rendered with helm), `plain`, `kustomize` or `helm`.
    #[serde(default)]
    pub render: RenderMode,
    /// Let a kustomization's remote bases and resources through.
    #[serde(default)]
    pub allow_remote_bases: bool,
    /// How long a render (`kustomize build`, `helm template`) may take.
    #[serde(default = "default_render_timeout", with = "humantime_serde_compat")]
    pub render_timeout: Duration,
    /// How a chart at the path is rendered: release name, values files, inline values.
    #[serde(default)]
    pub helm: Release,
    /// `onFailure`: a revision that fails midway or fails its health check is rolled back to the
    /// last one that was Synced and Healthy (`never`, the default, stays on it).
    #[serde(default)]
    pub rollback: Rollback,
    /// Where each sync's outcome is posted as a status of the commit it applied.
    #[serde(default)]
    pub commit_status: Option<CommitStatusConfig>,
    /// Where notifications of this source's events are sent.
    #[serde(default)]
    pub notify: Vec<NotifyConfig>,
}

/// A commit status on a forge, posted after each sync of the commit (see
/// [`crate::status::notify::forge`]). These types live here rather than in `status` because
/// `status` reads this module.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CommitStatusConfig {
    pub provider: Provider,
    /// The forge's API root; GitHub's and GitLab's public ones by default, required for Gitea.
    #[serde(default)]
    pub api_url: Option<String>,
    /// `owner/name`; on GitLab also `group/subgroup/project` or a numeric project id.
    pub repository: String,
    /// File holding the API token (read at each post, so it can rotate).
    pub token_file: PathBuf,
}

/// The forges a commit status can be posted to.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    GitHub,
    GitLab,
    Gitea,
}

impl Provider {
    /// Its name in the config file and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Provider::GitHub => "github",
            Provider::GitLab => "gitlab",
            Provider::Gitea => "gitea",
        }
    }

    /// The public API root, where the forge has one.
    pub fn default_api_url(self) -> Option<&'static str> {
        match self {
            Provider::GitHub => Some("https://api.github.com"),
            Provider::GitLab => Some("https://gitlab.com/api/v4"),
            Provider::Gitea => None,
        }
    }
}

impl CommitStatusConfig {
    /// The API root: the one set, or the provider's public one.
    pub fn api_url(&self) -> Option<&str> {
        self.api_url.as_deref().or(self.provider.default_api_url())
    }

    /// Checks the API root and the repository's form.
    fn check(&self) -> Result<(), String> {
        let provider = self.provider.as_str();
        let Some(api) = self.api_url() else { return Err(format!("commitStatus: apiUrl is required for {provider}")) };
        match url::Url::parse(api) {
            Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                if !u.username().is_empty() || u.password().is_some() || u.query().is_some() {
                    return Err("commitStatus: apiUrl must carry no credentials nor query (the token is read from tokenFile)".into());
                }
            }
            _ => return Err("commitStatus: apiUrl must be an http:// or https:// URL".into()),
        }
        let name_part =
            |p: &str| !p.is_empty() && p != "." && p != ".." && p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        let parts: Vec<&str> = self.repository.split('/').collect();
        let valid = match self.provider {
            Provider::GitHub | Provider::Gitea => parts.len() == 2 && parts.iter().all(|p| name_part(p)),
            Provider::GitLab => {
                let id = !self.repository.is_empty() && self.repository.chars().all(|c| c.is_ascii_digit());
                id || (parts.len() >= 2 && parts.iter().all(|p| name_part(p)))
            }
        };
        if !valid {
            let form =
                if self.provider == Provider::GitLab { "owner/name, group/.../project or a numeric project id" } else { "owner/name" };
            return Err(format!("commitStatus: repository {:?} must be {form} for {provider}", self.repository));
        }
        Ok(())
    }
}

/// A notification target (see [`crate::status::notify::hook`]).
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NotifyConfig {
    /// `webhook` (JSON, optionally signed) or `slack` (an incoming webhook).
    #[serde(rename = "type")]
    pub kind: NotifyType,
    /// File holding the URL (a Slack webhook URL is a secret); read at each send.
    pub url_file: PathBuf,
    /// File holding the secret that signs a webhook's body (`X-Signature-256`).
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// The events sent; empty sends all.
    #[serde(default)]
    pub events: Vec<NotifyEvent>,
}

/// How a notification is sent.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum NotifyType {
    Webhook,
    Slack,
}

impl NotifyType {
    /// Its name in the config file and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyType::Webhook => "webhook",
            NotifyType::Slack => "slack",
        }
    }
}

/// What a notification tells.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq, Hash)]
pub enum NotifyEvent {
    Synced,
    SyncFailed,
    HealthCheckFailed,
    PruneHeld,
    DriftCorrected,
    RolledBack,
}

impl NotifyEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyEvent::Synced => "Synced",
            NotifyEvent::SyncFailed => "SyncFailed",
            NotifyEvent::HealthCheckFailed => "HealthCheckFailed",
            NotifyEvent::PruneHeld => "PruneHeld",
            NotifyEvent::DriftCorrected => "DriftCorrected",
            NotifyEvent::RolledBack => "RolledBack",
        }
    }
}

impl NotifyConfig {
    /// Whether this target wants `event` (an empty list wants every event).
    pub fn wants(&self, event: NotifyEvent) -> bool {
        self.events.is_empty() || self.events.contains(&event)
    }

    fn check(&self) -> Result<(), String> {
        if self.kind == NotifyType::Slack && self.secret_file.is_some() {
            return Err("notify: secretFile is for type webhook (a Slack incoming webhook is not signed)".into());
        }
        Ok(())
    }
}

/// Credentials, always by file.
#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    pub token_file: Option<PathBuf>,
    pub username: Option<String>,
    pub username_file: Option<PathBuf>,
    pub password_file: Option<PathBuf>,
    pub ssh_key_file: Option<PathBuf>,
    pub known_hosts_file: Option<PathBuf>,
    pub passphrase_file: Option<PathBuf>,
}

fn default_namespace() -> String {
    "default".into()
}
fn default_interval() -> Duration {
    Duration::from_secs(60)
}
fn yes() -> bool {
    true
}
fn default_render_timeout() -> Duration {
    Duration::from_secs(60)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_max_prune_percent() -> u32 {
    50
}
fn default_fetch_timeout() -> Duration {
    DEFAULT_FETCH_TIMEOUT
}
fn default_max_fetch_bytes() -> u64 {
    DEFAULT_MAX_FETCH_BYTES
}

fn fetch_timeout<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("timeout {s:?}: {e}")))
}

mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| serde::de::Error::custom(format!("interval {s:?}: {e}")))
    }
}

impl AuthConfig {
    /// The source's auth; an inconsistent combination is an error.
    pub fn to_auth(&self) -> Result<Auth, String> {
        let ssh = self.ssh_key_file.is_some() || self.known_hosts_file.is_some();
        let basic = self.username_file.is_some() || self.password_file.is_some();
        let token = self.token_file.is_some();
        match (ssh, basic, token) {
            (false, false, false) => Ok(Auth::None),
            (true, false, false) => match &self.ssh_key_file {
                Some(key) => Ok(Auth::Ssh {
                    key_file: key.clone(),
                    known_hosts_file: self.known_hosts_file.clone(),
                    passphrase_file: self.passphrase_file.clone(),
                }),
                None => Err("knownHostsFile is set but sshKeyFile is not".into()),
            },
            (false, true, false) => match (&self.username_file, &self.password_file) {
                (Some(u), Some(p)) => Ok(Auth::Basic { username_file: u.clone(), password_file: p.clone() }),
                _ => Err("basic auth needs both usernameFile and passwordFile".into()),
            },
            (false, false, true) => {
                Ok(Auth::Token { token_file: self.token_file.clone().expect("checked"), username: self.username.clone() })
            }
            _ => Err("choose one of tokenFile, usernameFile/passwordFile or sshKeyFile".into()),
        }
    }
}

impl SourceConfig {
    /// Checks the settings and resolves them into what the stages take, fetching with the
    /// [`FetchConfig`] defaults.
    pub fn validate(&self) -> Result<Source, String> {
        self.validate_with(&FetchConfig::default())
    }

    /// [`SourceConfig::validate`] with these fetch settings.
    pub fn validate_with(&self, fetch: &FetchConfig) -> Result<Source, String> {
        let n = &self.name;
        let valid_name = !n.is_empty()
            && n.len() <= 53
            && n.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !n.starts_with('-')
            && !n.ends_with('-');
        if !valid_name {
            return Err(format!("source name {n:?} must be 1-53 lowercase letters, digits or '-' (it names the ApplySet parent)"));
        }
        if self.repo.is_empty() {
            return Err(format!("source {n}: repo is required"));
        }
        if self.max_prune_percent > 100 {
            return Err(format!("source {n}: maxPrunePercent must be 0-100"));
        }
        if self.interval < Duration::from_secs(1) {
            return Err(format!("source {n}: interval must be at least 1s"));
        }
        if fetch.timeout < Duration::from_secs(1) || fetch.timeout > Duration::from_secs(24 * 3600) {
            return Err(format!("source {n}: timeout must be between 1s and 24h"));
        }
        if self.render_timeout < Duration::from_secs(1) || self.render_timeout > Duration::from_secs(3600) {
            return Err(format!("source {n}: renderTimeout must be between 1s and 1h"));
        }
        if let Some(release) = self.helm.release.as_deref().filter(|r| !valid_release(r)) {
            return Err(format!("source {n}: helm.release {release:?} must be 1-53 lowercase letters, digits or '-'"));
        }
        if fetch.max_fetch_bytes == 0 {
            return Err(format!("source {n}: maxFetchBytes must be at least 1"));
        }
        let auth = self.auth.to_auth().map_err(|e| format!("source {n}: auth: {e}"))?;
        let spec = SourceSpec {
            url: self.repo.clone(),
            reference: self.reference.clone(),
            path: self.path.clone(),
            auth,
            timeout: fetch.timeout,
            max_fetch_bytes: fetch.max_fetch_bytes,
            insecure_http: fetch.insecure_http,
        };
        spec.check_plain_http().map_err(|e| format!("source {n}: {e}"))?;
        if let Some(cs) = &self.commit_status {
            cs.check().map_err(|e| format!("source {n}: {e}"))?;
        }
        for target in &self.notify {
            target.check().map_err(|e| format!("source {n}: {e}"))?;
        }
        Ok(Source {
            name: self.name.clone(),
            spec,
            namespace: self.namespace.clone(),
            interval: self.interval,
            prune: self.prune,
            allow_empty: self.allow_empty,
            max_prune_percent: self.max_prune_percent,
            prunable: self.prunable.iter().map(|s| GroupKind::parse(&protected_alias(s))).collect(),
            self_heal: self.self_heal,
            health_timeout: self.health_timeout,
            webhook_secret_file: self.webhook_secret_file.clone(),
            render: self.render,
            allow_remote_bases: self.allow_remote_bases,
            render_timeout: self.render_timeout,
            helm: self.helm.clone(),
            rollback: self.rollback,
            commit_status: self.commit_status.clone(),
            notify: self.notify.clone(),
        })
    }
}

/// `Namespace` / `PersistentVolumeClaim` / `CustomResourceDefinition` without a group are
/// accepted for the protected kinds.
fn protected_alias(s: &str) -> String {
    match s {
        "CustomResourceDefinition" => "CustomResourceDefinition.apiextensions.k8s.io".into(),
        other => other.into(),
    }
}

/// A validated source.
#[derive(Clone, Debug, PartialEq)]
pub struct Source {
    pub name: String,
    pub spec: SourceSpec,
    pub namespace: String,
    pub interval: Duration,
    pub prune: bool,
    pub allow_empty: bool,
    pub max_prune_percent: u32,
    pub prunable: BTreeSet<GroupKind>,
    pub self_heal: bool,
    pub health_timeout: Duration,
    pub webhook_secret_file: Option<PathBuf>,
    pub render: RenderMode,
    pub allow_remote_bases: bool,
    pub render_timeout: Duration,
    pub helm: Release,
    pub commit_status: Option<CommitStatusConfig>,
    pub notify: Vec<NotifyConfig>,
    pub rollback: Rollback,
}

/// What happens when a revision fails midway or fails its health check.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "camelCase")]
pub enum Rollback {
    /// Stay on the failed revision (what it applied stays), retry it at each poll.
    #[default]
    Never,
    /// Re-apply the last revision that was Synced and Healthy (pruning what the failed one
    /// added), and leave the failed commit alone until a newer one lands.
    OnFailure,
}

impl Source {
    /// The Helm release name of the source's chart (default: the source's name).
    pub fn helm_release(&self) -> &str {
        self.helm.release.as_deref().unwrap_or(&self.name)
    }
}

/// Parses and validates a config file's text.
pub fn parse(text: &str) -> Result<Vec<Source>, String> {
    let value = crate::render::yaml::parse_config(text)?;
    let file: ConfigFile = serde_json::from_value(value).map_err(|e| e.to_string())?;
    let mut names = BTreeSet::new();
    let mut out = Vec::new();
    for SourceEntry { source, fetch } in &file.sources {
        if !names.insert(source.name.clone()) {
            return Err(format!("source {} is listed twice", source.name));
        }
        out.push(source.validate_with(fetch)?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_config_without_sources_is_valid_and_idle() {
        assert_eq!(parse("sources: []").unwrap(), vec![]);
    }

    #[test]
    fn defaults_apply() {
        let sources = parse("sources:\n- name: shop\n  repo: https://git.example/shop.git\n").unwrap();
        let s = &sources[0];
        assert_eq!(s.interval, Duration::from_secs(60));
        assert!(s.prune);
        assert_eq!(s.max_prune_percent, 50);
        assert_eq!(s.namespace, "default");
        assert_eq!(s.spec.auth, Auth::None);
        assert_eq!(s.spec.reference, None);
        assert!(s.self_heal);
        assert_eq!(s.health_timeout, Duration::from_secs(300));
        assert_eq!(s.spec.timeout, Duration::from_secs(60));
        assert_eq!(s.spec.max_fetch_bytes, 256 << 20);
        assert!(!s.spec.insecure_http);
    }

    #[test]
    fn every_field_is_read() {
        let text = r#"
sources:
- name: shop
  repo: ssh://git@git.example/shop.git
  ref: v1.2.0
  path: deploy/prod
  namespace: shop
  interval: 30s
  prune: false
  allowEmpty: true
  maxPrunePercent: 20
  prunable: [Namespace, CustomResourceDefinition]
  auth: {sshKeyFile: /k/id, knownHostsFile: /k/known_hosts}
  selfHeal: false
  healthTimeout: 90s
  timeout: 2m
  maxFetchBytes: 1048576
  insecureHttp: true
"#;
        let s = &parse(text).unwrap()[0];
        assert_eq!(s.interval, Duration::from_secs(30));
        assert!(!s.prune && s.allow_empty);
        assert_eq!(s.max_prune_percent, 20);
        assert_eq!(s.spec.path, "deploy/prod");
        assert!(s.prunable.contains(&GroupKind::new("apiextensions.k8s.io", "CustomResourceDefinition")));
        assert!(matches!(&s.spec.auth, Auth::Ssh { known_hosts_file: Some(_), .. }));
        assert!(!s.self_heal);
        assert_eq!(s.health_timeout, Duration::from_secs(90));
        assert_eq!(s.spec.timeout, Duration::from_secs(120));
        assert_eq!(s.spec.max_fetch_bytes, 1 << 20);
        assert!(s.spec.insecure_http);
    }

    #[test]
    fn credentials_over_plain_http_need_insecure_http() {
        for auth in ["{tokenFile: /t}", "{usernameFile: /u, passwordFile: /p}"] {
            let text = format!("sources:\n- {{name: a, repo: 'http://git.example/a.git', auth: {auth}}}");
            let err = parse(&text).unwrap_err();
            assert!(err.contains("source a: refusing to send") && err.contains("insecureHttp: true"), "{err}");
            let text = format!("sources:\n- {{name: a, repo: 'http://git.example/a.git', insecureHttp: true, auth: {auth}}}");
            assert!(parse(&text).unwrap()[0].spec.insecure_http);
        }
        let err = parse("sources:\n- {name: a, repo: 'http://u:hunter2@git.example/a.git'}").unwrap_err();
        assert!(err.contains("a password in the URL") && !err.contains("hunter2"), "{err}");
        assert!(parse("sources:\n- {name: a, repo: 'https://git.example/a.git', auth: {tokenFile: /t}}").is_ok());
        assert!(parse("sources:\n- {name: a, repo: 'http://git.example/a.git'}").is_ok());
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let cases = [
            ("sources:\n- {name: Shop, repo: x}", "lowercase"),
            ("sources:\n- {name: a, repo: x}\n- {name: a, repo: y}", "twice"),
            ("sources:\n- {name: a, repo: x, interval: soon}", "interval"),
            ("sources:\n- {name: a, repo: x, maxPrunePercent: 101}", "0-100"),
            ("sources:\n- {name: a, repo: x, typo: 1}", "typo"),
            ("sources:\n- {name: a, repo: x, auth: {tokenFile: /t, sshKeyFile: /k}}", "choose one"),
            ("sources:\n- {name: a, repo: x, auth: {usernameFile: /u}}", "both"),
            ("sources:\n- {name: a, repo: x, timeout: soon}", "timeout \"soon\""),
            ("sources:\n- {name: a, repo: x, timeout: 500ms}", "timeout must be between 1s and 24h"),
            ("sources:\n- {name: a, repo: x, timeout: 2d}", "timeout must be between 1s and 24h"),
            ("sources:\n- {name: a, repo: x, maxFetchBytes: 0}", "maxFetchBytes must be at least 1"),
            ("sources:\n- {name: a, repo: x, maxFetchBytes: -1}", "invalid value"),
            ("sources:\n- {name: a, repo: x, insecureHttp: 1}", "invalid type"),
        ];
        for (text, expect) in cases {
            let err = parse(text).unwrap_err();
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }

    #[test]
    fn commit_status_and_notify_are_read_and_checked() {
        let text = r#"
sources:
- name: shop
  repo: https://git.example/shop.git
  commitStatus: {provider: gitlab, repository: group/sub/shop, tokenFile: /t/gitlab}
  notify:
  - {type: slack, urlFile: /t/slack, events: [SyncFailed, HealthCheckFailed]}
  - {type: webhook, urlFile: /t/hook, secretFile: /t/hook-secret}
"#;
        let s = &parse(text).unwrap()[0];
        let cs = s.commit_status.as_ref().unwrap();
        assert_eq!((cs.provider, cs.repository.as_str()), (Provider::GitLab, "group/sub/shop"));
        assert_eq!(cs.api_url(), Some("https://gitlab.com/api/v4"));
        assert_eq!(s.notify.len(), 2);
        assert_eq!(s.notify[0].kind, NotifyType::Slack);
        assert!(s.notify[0].wants(NotifyEvent::SyncFailed) && !s.notify[0].wants(NotifyEvent::Synced));
        assert!(s.notify[1].wants(NotifyEvent::RolledBack), "no events: every event");
        assert_eq!(s.notify[1].secret_file.as_deref(), Some(std::path::Path::new("/t/hook-secret")));
        let github = parse("sources:\n- {name: a, repo: x, commitStatus: {provider: github, repository: o/r, tokenFile: /t}}").unwrap();
        assert_eq!(github[0].commit_status.as_ref().unwrap().api_url(), Some("https://api.github.com"));
        let gitlab_id = "sources:\n- {name: a, repo: x, commitStatus: {provider: gitlab, repository: '1234', tokenFile: /t}}";
        assert!(parse(gitlab_id).is_ok());
        let gitea = "sources:\n- {name: a, repo: x, commitStatus: {provider: gitea, apiUrl: 'http://127.0.0.1:3000/api/v1', repository: o/r, tokenFile: /t}}";
        assert!(parse(gitea).is_ok());
        assert!(parse("sources:\n- {name: a, repo: x}").unwrap()[0].notify.is_empty());
    }

    #[test]
    fn bad_commit_status_and_notify_settings_are_refused() {
        let cs = |body: &str| format!("sources:\n- {{name: a, repo: x, commitStatus: {{{body}}}}}");
        let cases = [
            (cs("provider: gitea, repository: o/r, tokenFile: /t"), "apiUrl is required for gitea"),
            (cs("provider: github, apiUrl: 'ftp://x', repository: o/r, tokenFile: /t"), "http:// or https://"),
            (cs("provider: github, apiUrl: 'https://u:p@x', repository: o/r, tokenFile: /t"), "no credentials"),
            (cs("provider: github, repository: '', tokenFile: /t"), "must be owner/name for github"),
            (cs("provider: github, repository: shop, tokenFile: /t"), "must be owner/name for github"),
            (cs("provider: gitea, apiUrl: 'https://g', repository: o/r/x, tokenFile: /t"), "must be owner/name for gitea"),
            (cs("provider: gitlab, repository: '../x', tokenFile: /t"), "numeric project id"),
            (cs("provider: bitbucket, repository: o/r, tokenFile: /t"), "unknown variant"),
            (cs("provider: github, repository: o/r"), "tokenFile"),
            (cs("provider: github, repository: o/r, tokenFile: /t, token: x"), "unknown field"),
            ("sources:\n- {name: a, repo: x, notify: [{type: email, urlFile: /u}]}".into(), "unknown variant"),
            ("sources:\n- {name: a, repo: x, notify: [{type: slack, urlFile: /u, events: [Deployed]}]}".into(), "unknown variant"),
            (
                "sources:\n- {name: a, repo: x, notify: [{type: slack, urlFile: /u, secretFile: /s}]}".into(),
                "secretFile is for type webhook",
            ),
            ("sources:\n- {name: a, repo: x, notify: [{type: webhook}]}".into(), "urlFile"),
        ];
        for (text, expect) in cases {
            let err = parse(&text).unwrap_err();
            assert!(err.contains(expect), "{text:?}: {err}");
        }
    }
}
