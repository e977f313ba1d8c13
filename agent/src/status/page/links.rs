//! Links to a commit on the forge that hosts a repository, for the hosts whose commit URLs are
//! known: GitHub, GitLab, Codeberg and Bitbucket.

/// The web page of `commit` in the repository at `repo` (already redacted), or none when the
/// host is not a known forge or the path is not `owner/name`.
pub fn commit_url(repo: &str, commit: &str) -> Option<String> {
    if !commit.bytes().all(|b| b.is_ascii_hexdigit()) || commit.is_empty() {
        return None;
    }
    let (host, path) = host_and_path(repo)?;
    let path = path.trim_matches('/').trim_end_matches(".git");
    // owner/name (GitLab allows subgroups: group/sub/name)
    let plain = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b)) && s != ".." && s != ".";
    if path.split('/').count() < 2 || !path.split('/').all(plain) {
        return None;
    }
    let host = host.to_ascii_lowercase();
    match host.as_str() {
        "github.com" | "codeberg.org" => Some(format!("https://{host}/{path}/commit/{commit}")),
        "gitlab.com" => Some(format!("https://{host}/{path}/-/commit/{commit}")),
        "bitbucket.org" => Some(format!("https://{host}/{path}/commits/{commit}")),
        _ => None,
    }
}

/// The host and path of an `https://`, `ssh://` or scp-like (`git@host:owner/name`) URL.
fn host_and_path(repo: &str) -> Option<(&str, &str)> {
    if let Some((scheme, rest)) = repo.split_once("://") {
        if !matches!(scheme, "https" | "http" | "ssh" | "git+ssh" | "git") {
            return None;
        }
        let (authority, path) = rest.split_once('/')?;
        let host = authority.rsplit('@').next()?;
        let host = host.split(':').next()?;
        return Some((host, path));
    }
    let (head, path) = repo.split_once(':')?;
    if head.contains('/') {
        return None;
    }
    Some((head.rsplit('@').next()?, path))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHA: &str = "0123456789abcdef0123456789abcdef01234567";

    #[test]
    fn known_forges_get_a_commit_link() {
        let link = |repo: &str| commit_url(repo, SHA);
        assert_eq!(link("https://github.com/acme/shop.git").as_deref(), Some(&*format!("https://github.com/acme/shop/commit/{SHA}")));
        assert_eq!(link("git@github.com:acme/shop.git").as_deref(), Some(&*format!("https://github.com/acme/shop/commit/{SHA}")));
        assert_eq!(link("ssh://git@GitHub.com:22/acme/shop").as_deref(), Some(&*format!("https://github.com/acme/shop/commit/{SHA}")));
        assert_eq!(link("https://gitlab.com/acme/ops/shop").as_deref(), Some(&*format!("https://gitlab.com/acme/ops/shop/-/commit/{SHA}")));
        assert_eq!(link("https://codeberg.org/acme/shop").as_deref(), Some(&*format!("https://codeberg.org/acme/shop/commit/{SHA}")));
        assert_eq!(
            link("https://bitbucket.org/acme/shop.git").as_deref(),
            Some(&*format!("https://bitbucket.org/acme/shop/commits/{SHA}"))
        );
    }

    #[test]
    fn anything_else_gets_none() {
        for repo in [
            "https://git.internal/acme/shop.git",
            "file:///srv/git/shop.git",
            "https://github.com/acme",
            "https://github.com/acme/shop/../../evil",
            "https://github.com/acme/sh\"op",
            "javascript://github.com/a/b",
            "/srv/git/shop",
        ] {
            assert_eq!(commit_url(repo, SHA), None, "{repo}");
        }
        assert_eq!(commit_url("https://github.com/acme/shop", "main\"><script>"), None);
    }
}
