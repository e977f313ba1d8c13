//! Throwaway repositories for the source tests, built with git2 straight into the object
//! database (so symlinks and gitlinks need no filesystem support).

use std::path::{Path, PathBuf};

use git2::{Oid, Repository, Signature};

use super::{Auth, Repo, SourceSpec};

/// One entry of a test tree.
#[derive(Clone, Copy, Debug)]
pub enum Node<'a> {
    /// A regular file with this content.
    File(&'a [u8]),
    /// A symlink to this target.
    Link(&'a str),
    /// A submodule at this commit id.
    Gitlink(&'a str),
}

pub use Node::{File, Gitlink, Link};

/// Writes the tree for `entries` (paths with `/`), returning its id.
pub fn write_tree(repo: &Repository, entries: &[(&str, Node<'_>)]) -> Oid {
    let owned: Vec<(String, Node<'_>)> = entries.iter().map(|(p, n)| (p.to_string(), *n)).collect();
    write_subtree(repo, &owned)
}

fn write_subtree(repo: &Repository, entries: &[(String, Node<'_>)]) -> Oid {
    let mut builder = repo.treebuilder(None).unwrap();
    let mut dirs: Vec<(String, Vec<(String, Node<'_>)>)> = Vec::new();
    for (path, node) in entries {
        match path.split_once('/') {
            Some((dir, rest)) => match dirs.iter_mut().find(|(d, _)| d == dir) {
                Some((_, children)) => children.push((rest.to_string(), *node)),
                None => dirs.push((dir.to_string(), vec![(rest.to_string(), *node)])),
            },
            None => {
                let (oid, mode) = match node {
                    Node::File(content) => (repo.blob(content).unwrap(), 0o100644),
                    Node::Link(target) => (repo.blob(target.as_bytes()).unwrap(), 0o120000),
                    Node::Gitlink(commit) => (Oid::from_str(commit).unwrap(), 0o160000),
                };
                builder.insert(path, oid, mode).unwrap();
            }
        }
    }
    for (dir, children) in dirs {
        let oid = write_subtree(repo, &children);
        builder.insert(&dir, oid, 0o040000).unwrap();
    }
    builder.write().unwrap()
}

/// Commits `entries` as the new tip of `branch` (creating it), returning the commit id.
pub fn commit_on(repo_path: &Path, branch: &str, entries: &[(&str, Node<'_>)]) -> Oid {
    let repo = Repository::open(repo_path).unwrap();
    let tree = repo.find_tree(write_tree(&repo, entries)).unwrap();
    let sig = Signature::now("Test", "test@example.com").unwrap();
    let refname = format!("refs/heads/{branch}");
    let parent = repo.find_reference(&refname).ok().and_then(|r| r.peel_to_commit().ok());
    let parents: Vec<&git2::Commit<'_>> = parent.iter().collect();
    repo.commit(Some(&refname), &sig, &sig, "test commit", &tree, &parents).unwrap()
}

/// Creates a non-bare repository at `dir/name` whose `main` branch (and HEAD) has one commit
/// with `entries`. Nothing is checked out. Returns the repository's path.
pub fn make_repo(dir: &Path, name: &str, entries: &[(&str, Node<'_>)]) -> PathBuf {
    let path = dir.join(name);
    let repo = Repository::init(&path).unwrap();
    commit_on(&path, "main", entries);
    repo.set_head("refs/heads/main").unwrap();
    path
}

/// Adds an annotated tag `name` on `target`.
pub fn annotated_tag(repo_path: &Path, name: &str, target: Oid) -> Oid {
    let repo = Repository::open(repo_path).unwrap();
    let obj = repo.find_object(target, None).unwrap();
    let sig = Signature::now("Test", "test@example.com").unwrap();
    repo.tag(name, &obj, &sig, "a tag", false).unwrap()
}

/// A spec for `url` at the root, without auth.
pub fn spec_for(url: &str) -> SourceSpec {
    SourceSpec { url: url.to_string(), reference: None, path: String::new(), auth: Auth::None }
}

/// Creates `dir/origin` with `entries`, opens a [`Repo`] for it reading `path` (cache in
/// `dir/cache`), fetches HEAD and returns the repo and the commit.
pub fn fetched(dir: &Path, path: &str, entries: &[(&str, Node<'_>)]) -> (Repo, String) {
    std::fs::create_dir_all(dir).unwrap();
    let origin = make_repo(dir, "origin", entries);
    let mut spec = spec_for(origin.to_str().unwrap());
    spec.path = path.to_string();
    let repo = Repo::open(spec, &dir.join("cache")).unwrap();
    let commit = repo.remote_commit().unwrap();
    repo.fetch(&commit).unwrap();
    (repo, commit)
}

/// The same source and cache, reading another path.
pub fn reopen_with_path(repo: &Repo, path: &str) -> Repo {
    let mut spec = repo.spec().clone();
    spec.path = path.to_string();
    Repo::open(spec, repo.cache_path().parent().unwrap()).unwrap()
}
