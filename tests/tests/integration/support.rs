//! Tests of the support crate itself that need no cluster: git fixtures, names, waiting, HTTP.

use std::path::Path;
use std::time::Duration;

use driftless_tests::agent::try_http_request;
use driftless_tests::{unique_name, wait_for, GitFixture, FIXTURE_AUTHOR};
use git2::{ObjectType, Repository};

/// Reads `path` from the tree of `rev` in the repository at `repo`.
fn blob(repo: &Repository, rev: &str, path: &str) -> Option<Vec<u8>> {
    let tree = repo.revparse_single(rev).ok()?.peel_to_tree().ok()?;
    let entry = tree.get_path(Path::new(path)).ok()?;
    let obj = entry.to_object(repo).ok()?;
    obj.as_blob().map(|b| b.content().to_vec())
}

#[test]
fn git_fixture_commits_files_removals_symlinks_and_tags() {
    let fx = GitFixture::new();
    fx.write("apps/web/deploy.yaml", "kind: Deployment\n").write("README.md", "hi\n");
    fx.symlink("apps/link.yaml", "web/deploy.yaml");
    let first = fx.commit("first");
    assert_eq!(first.len(), 40);
    assert_eq!(fx.head(), first);
    fx.tag("v1").tag_annotated("v1-annotated", "release v1");

    fx.remove("README.md").write("apps/web/deploy.yaml", "kind: Deployment # v2\n");
    let second = fx.commit("second");
    assert_ne!(first, second);

    // Read back through a fresh handle, as the agent would after cloning.
    let repo = Repository::open(fx.path()).expect("open fixture");
    let head = repo.head().expect("HEAD");
    assert_eq!(head.name().ok(), Some("refs/heads/main"));
    let commit = head.peel_to_commit().expect("commit");
    assert_eq!(commit.id().to_string(), second);
    assert_eq!(commit.author().name().ok(), Some(FIXTURE_AUTHOR));
    assert_eq!(commit.parent_id(0).expect("parent").to_string(), first);

    assert_eq!(blob(&repo, "main", "apps/web/deploy.yaml").as_deref(), Some(&b"kind: Deployment # v2\n"[..]));
    assert_eq!(blob(&repo, "main", "README.md"), None, "removal was committed");
    assert_eq!(blob(&repo, "v1", "README.md").as_deref(), Some(&b"hi\n"[..]));

    let tree = repo.revparse_single("v1").unwrap().peel_to_tree().unwrap();
    let link = tree.get_path(Path::new("apps/link.yaml")).expect("symlink entry");
    assert_eq!(link.filemode(), 0o120000, "stored as a symlink");
    assert_eq!(blob(&repo, "v1", "apps/link.yaml").as_deref(), Some(&b"web/deploy.yaml"[..]));

    let annotated = repo.revparse_single("refs/tags/v1-annotated").unwrap();
    assert_eq!(annotated.kind(), Some(ObjectType::Tag));
    assert_eq!(annotated.peel_to_commit().unwrap().id().to_string(), first);
    assert!(fx.url().starts_with("file:///"));
}

#[test]
fn git_fixture_copies_a_directory_and_clones_over_file_urls() {
    let src = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(src.path().join("base/sub")).unwrap();
    std::fs::write(src.path().join("base/sub/a.yaml"), "a: 1\n").unwrap();
    std::fs::write(src.path().join("top.yaml"), "top: 1\n").unwrap();
    std::os::unix::fs::symlink("base/sub/a.yaml", src.path().join("alias.yaml")).unwrap();

    let fx = GitFixture::new();
    fx.copy_dir(src.path(), "clusters/dev");
    fx.copy_dir(src.path(), "");
    fx.commit("copy");

    let clone_dir = tempfile::tempdir().unwrap();
    let clone = Repository::clone(&fx.url(), clone_dir.path()).expect("clone over file://");
    for path in ["clusters/dev/base/sub/a.yaml", "clusters/dev/top.yaml", "top.yaml", "base/sub/a.yaml"] {
        assert!(blob(&clone, "HEAD", path).is_some(), "{path} missing in the clone");
    }
    let alias = std::fs::read_link(clone_dir.path().join("clusters/dev/alias.yaml")).expect("symlink in clone");
    assert_eq!(alias, Path::new("base/sub/a.yaml"));
}

#[test]
fn unique_names_are_dns_labels() {
    let long = "Some_Test::with  Weird--chars/and a very long name that goes on and on and on and on";
    for prefix in ["t-deployment", long, "", "---", "UPPER"] {
        let name = unique_name(prefix);
        assert!(name.len() <= 63, "{name} is too long");
        assert!(name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'), "{name} has invalid characters");
        assert!(name.starts_with(|c: char| c.is_ascii_alphanumeric()), "{name}");
        assert!(name.ends_with(|c: char| c.is_ascii_alphanumeric()), "{name}");
    }
    assert!(unique_name("t-deployment").starts_with("t-deployment-"));
    assert_ne!(unique_name("x"), unique_name("x"));
}

#[tokio::test]
async fn wait_for_returns_the_value() {
    let mut calls = 0;
    let v = wait_for("the third call", Duration::from_secs(5), || {
        calls += 1;
        let n = calls;
        async move { (n >= 3).then_some(n) }
    })
    .await;
    assert_eq!(v, 3);
}

#[tokio::test]
#[should_panic(expected = "waiting for something that never happens")]
async fn wait_for_panics_with_what_on_timeout() {
    wait_for("something that never happens", Duration::from_millis(200), || async { None::<()> }).await;
}

/// A server that reads one request, writes `answer` and then keeps the connection open.
async fn answer_and_stay(answer: &'static [u8]) -> std::net::SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        let (mut stream, _) = listener.accept().await.expect("a connection");
        let mut buf = [0u8; 4096];
        let _ = stream.read(&mut buf).await;
        stream.write_all(answer).await.expect("write the answer");
        tokio::time::sleep(Duration::from_secs(60)).await;
        drop(stream);
    });
    addr
}

#[tokio::test]
async fn http_requests_end_with_the_answer_when_the_server_keeps_the_connection_open() {
    let sized = answer_and_stay(b"HTTP/1.1 200 OK\r\nContent-Length:5\r\nConnection:close\r\n\r\nhello").await;
    let chunked = answer_and_stay(b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").await;
    let limit = Duration::from_secs(5);
    let started = std::time::Instant::now();
    let answer = try_http_request(sized, "GET", "/", &[], b"", limit).await.expect("the sized answer");
    assert_eq!((answer.status, answer.body.as_str()), (200, "hello"));
    let answer = try_http_request(chunked, "POST", "/", &[], b"{}", limit).await.expect("the chunked answer");
    assert_eq!((answer.status, answer.body.as_str()), (201, "abcde"));
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());

    let silent = answer_and_stay(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort").await;
    let err = try_http_request(silent, "GET", "/x", &[], b"", Duration::from_millis(300)).await.expect_err("an incomplete answer");
    assert!(format!("{err:#}").contains("GET http://") && format!("{err:#}").contains("/x: no answer in 300ms"), "{err:#}");
}
