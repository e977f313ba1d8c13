//! Commit statuses: a sync's outcome shown next to the commit on the forge.
//!
//! | forge  | request                                            | auth header                 | state words                 |
//! |--------|----------------------------------------------------|-----------------------------|-----------------------------|
//! | GitHub | `POST {api}/repos/{owner}/{repo}/statuses/{sha}`   | `Authorization: Bearer <t>` | `pending`, `success`, `failure` |
//! | GitLab | `POST {api}/projects/{id}/statuses/{sha}`          | `PRIVATE-TOKEN: <t>`        | `pending`, `success`, `failed`  |
//! | Gitea  | `POST {api}/repos/{owner}/{repo}/statuses/{sha}`   | `Authorization: token <t>`  | `pending`, `success`, `failure` |
//!
//! The status is named `driftless/<source>` (`context` on GitHub and Gitea, `name` on GitLab);
//! its description is one line of at most [`MAX_DESCRIPTION`] characters. The token is read
//! from its file at each post and goes nowhere but its header.

use http::header::{HeaderName, ACCEPT, AUTHORIZATION, CONTENT_TYPE, USER_AGENT};
use http::Method;
use serde_json::json;

pub use crate::config::{CommitStatusConfig, Provider};

use super::http::{user_agent, HttpError, Request};

/// GitHub's limit on a status's description, in characters.
pub const MAX_DESCRIPTION: usize = 140;

/// What a commit status says.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum CommitState {
    /// The commit is being synced.
    Pending,
    /// The commit was synced (and is Healthy).
    Success,
    /// Syncing the commit failed.
    Failure,
}

impl CommitState {
    /// The forge's word for the state (GitLab says `failed`).
    pub fn as_str(self, provider: Provider) -> &'static str {
        match (self, provider) {
            (CommitState::Pending, _) => "pending",
            (CommitState::Success, _) => "success",
            (CommitState::Failure, Provider::GitLab) => "failed",
            (CommitState::Failure, Provider::GitHub | Provider::Gitea) => "failure",
        }
    }
}

/// One line (control characters and runs of whitespace become one space), at most
/// [`MAX_DESCRIPTION`] characters, with an ellipsis when cut.
pub fn description(text: &str) -> String {
    let line = text.split(|c: char| c.is_whitespace() || c.is_control()).filter(|w| !w.is_empty()).collect::<Vec<_>>().join(" ");
    if line.chars().count() <= MAX_DESCRIPTION {
        return line;
    }
    let mut cut: String = line.chars().take(MAX_DESCRIPTION - 3).collect();
    cut.push_str("...");
    cut
}

/// A path segment with every byte but the unreserved ones (`A-Z a-z 0-9 - . _ ~`) percent-encoded:
/// GitLab's `group/project` becomes `group%2Fproject`.
pub fn encode_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The request that posts `state` for `commit` of `source`: pure, so each forge's shape is tested
/// without a network.
pub fn status_request(
    cfg: &CommitStatusConfig,
    token: &str,
    source: &str,
    commit: &str,
    state: CommitState,
    description_text: &str,
) -> Result<Request, HttpError> {
    // the parts: API root, commit, repository
    let api = cfg.api_url().ok_or(HttpError::InvalidRequest("no apiUrl for this provider"))?.trim_end_matches('/');
    if commit.is_empty() || !commit.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(HttpError::InvalidRequest("the commit is not a hex object id"));
    }
    let context = format!("driftless/{source}");
    let description = description(description_text);
    let word = state.as_str(cfg.provider);
    let owner_repo = || match cfg.repository.split_once('/') {
        Some((owner, repo)) if !owner.is_empty() && !repo.is_empty() && !repo.contains('/') => {
            Ok(format!("{}/{}", encode_segment(owner), encode_segment(repo)))
        }
        _ => Err(HttpError::InvalidRequest("the repository is not owner/name")),
    };
    // the forge's path, auth header and body
    let (path, auth, body): (String, (HeaderName, String), serde_json::Value) = match cfg.provider {
        Provider::GitHub => (
            format!("/repos/{}/statuses/{commit}", owner_repo()?),
            (AUTHORIZATION, format!("Bearer {token}")),
            json!({"state": word, "context": context, "description": description}),
        ),
        Provider::Gitea => (
            format!("/repos/{}/statuses/{commit}", owner_repo()?),
            (AUTHORIZATION, format!("token {token}")),
            json!({"state": word, "context": context, "description": description}),
        ),
        Provider::GitLab => {
            if cfg.repository.is_empty() {
                return Err(HttpError::InvalidRequest("the repository is empty"));
            }
            (
                format!("/projects/{}/statuses/{commit}", encode_segment(&cfg.repository)),
                (HeaderName::from_static("private-token"), token.to_string()),
                json!({"state": word, "name": context, "description": description}),
            )
        }
    };
    let mut headers = vec![auth, (CONTENT_TYPE, "application/json".to_string()), (USER_AGENT, user_agent())];
    if cfg.provider == Provider::GitHub {
        headers.push((ACCEPT, "application/vnd.github+json".to_string()));
    }
    Ok(Request { method: Method::POST, url: format!("{api}{path}"), headers, body: body.to_string().into_bytes() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    fn cfg(provider: Provider, api_url: Option<&str>, repository: &str) -> CommitStatusConfig {
        CommitStatusConfig { provider, api_url: api_url.map(String::from), repository: repository.into(), token_file: PathBuf::from("/t") }
    }

    fn body(req: &Request) -> serde_json::Value {
        serde_json::from_slice(&req.body).unwrap()
    }

    #[test]
    fn github_statuses_use_bearer_and_context() {
        let req =
            status_request(&cfg(Provider::GitHub, None, "acme/shop"), "tok", "shop", SHA, CommitState::Failure, "apply failed").unwrap();
        assert_eq!(req.method, Method::POST);
        assert_eq!(req.url, format!("https://api.github.com/repos/acme/shop/statuses/{SHA}"));
        assert_eq!(req.header("authorization"), Some("Bearer tok"));
        assert_eq!(req.header("accept"), Some("application/vnd.github+json"));
        assert_eq!(req.header("user-agent"), Some(format!("driftless/{}", crate::VERSION).as_str()));
        assert_eq!(req.header("content-type"), Some("application/json"));
        assert_eq!(body(&req), json!({"state": "failure", "context": "driftless/shop", "description": "apply failed"}));
    }

    #[test]
    fn gitlab_statuses_use_private_token_name_failed_and_an_encoded_path() {
        let c = cfg(Provider::GitLab, None, "group/sub/shop");
        let req = status_request(&c, "tok", "shop", SHA, CommitState::Failure, "x").unwrap();
        assert_eq!(req.url, format!("https://gitlab.com/api/v4/projects/group%2Fsub%2Fshop/statuses/{SHA}"));
        assert_eq!(req.header("private-token"), Some("tok"));
        assert_eq!(req.header("authorization"), None);
        assert_eq!(body(&req), json!({"state": "failed", "name": "driftless/shop", "description": "x"}));
        let by_id = status_request(&cfg(Provider::GitLab, Some("https://git.corp/api/v4/"), "42"), "t", "a", SHA, CommitState::Pending, "")
            .unwrap();
        assert_eq!(by_id.url, format!("https://git.corp/api/v4/projects/42/statuses/{SHA}"));
        assert_eq!(body(&by_id)["state"], "pending");
    }

    #[test]
    fn gitea_statuses_use_token_auth_and_need_an_api_url() {
        let c = cfg(Provider::Gitea, Some("https://gitea.corp/api/v1"), "acme/shop");
        let req = status_request(&c, "tok", "shop", SHA, CommitState::Success, "synced").unwrap();
        assert_eq!(req.url, format!("https://gitea.corp/api/v1/repos/acme/shop/statuses/{SHA}"));
        assert_eq!(req.header("authorization"), Some("token tok"));
        assert_eq!(body(&req), json!({"state": "success", "context": "driftless/shop", "description": "synced"}));
        let err = status_request(&cfg(Provider::Gitea, None, "acme/shop"), "tok", "shop", SHA, CommitState::Success, "").unwrap_err();
        assert!(matches!(err, HttpError::InvalidRequest(_)), "{err}");
    }

    #[test]
    fn odd_commits_and_repositories_are_refused_not_spliced_into_the_path() {
        let c = cfg(Provider::GitHub, None, "acme/shop");
        assert!(status_request(&c, "t", "s", "../../user", CommitState::Success, "").is_err());
        assert!(status_request(&c, "t", "s", "", CommitState::Success, "").is_err());
        assert!(status_request(&cfg(Provider::GitHub, None, "shop"), "t", "s", SHA, CommitState::Success, "").is_err());
        let req = status_request(&cfg(Provider::GitHub, None, "acme/sh?op"), "t", "s", SHA, CommitState::Success, "").unwrap();
        assert!(req.url.contains("/repos/acme/sh%3Fop/"), "{}", req.url);
    }

    #[test]
    fn descriptions_are_one_line_of_at_most_140_characters() {
        assert_eq!(description("apply failed:\n  Deployment/web\r\n\tinvalid"), "apply failed: Deployment/web invalid");
        let long = description(&"é".repeat(500));
        assert_eq!(long.chars().count(), MAX_DESCRIPTION);
        assert!(long.ends_with("..."));
        assert_eq!(description(&"x".repeat(140)), "x".repeat(140));
    }
}
