//! Throwaway repositories for the source tests, built with git2 straight into the object
//! database (so symlinks and gitlinks need no filesystem support), and a loopback HTTP server
//! that can serve them (through `git http-backend`), redirect, trickle or hang.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use git2::{Oid, Repository, Signature};

use super::{Auth, Repo, SourceSpec, DEFAULT_FETCH_TIMEOUT, DEFAULT_MAX_FETCH_BYTES};

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

/// A spec for `url` at the root, without auth, with the default fetch bounds.
pub fn spec_for(url: &str) -> SourceSpec {
    SourceSpec {
        url: url.to_string(),
        reference: None,
        path: String::new(),
        auth: Auth::None,
        timeout: DEFAULT_FETCH_TIMEOUT,
        max_fetch_bytes: DEFAULT_MAX_FETCH_BYTES,
        insecure_http: false,
    }
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

/// `len` bytes that do not compress (xorshift), different for each `seed`.
pub fn noise(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// A request a [`TestServer`] received.
#[derive(Clone, Debug)]
pub struct Received {
    pub method: String,
    /// The path and query.
    pub target: String,
    /// Header names lowercased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Received {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str())
    }
}

/// What a [`TestServer`] does with a request.
pub enum Answer {
    /// Writes this whole HTTP response and closes the connection.
    Send(Vec<u8>),
    /// Writes it `chunk` bytes at a time with `pause` in between (a slow server).
    Trickle { bytes: Vec<u8>, chunk: usize, pause: Duration },
    /// Keeps the connection open and never answers (a hung server).
    Hang,
}

/// How long a [`TestServer`] serves at most: it stops by itself.
const SERVER_LIFETIME: Duration = Duration::from_secs(60);

/// A loopback HTTP/1.1 server on a port of its own: one request per connection, answered by
/// the handler in turn. Records what it received. Stops when dropped or after
/// [`SERVER_LIFETIME`]; connections it left hanging are closed then.
pub struct TestServer {
    pub addr: SocketAddr,
    received: Arc<Mutex<Vec<Received>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Listens on `ip` (a loopback address such as `127.0.0.1` or `127.0.0.2`), port 0.
    pub fn start(ip: &str, mut handler: impl FnMut(&Received) -> Answer + Send + 'static) -> Self {
        let listener = TcpListener::bind((ip, 0)).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (record, stopped) = (Arc::clone(&received), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let until = Instant::now() + SERVER_LIFETIME;
            let mut hanging = Vec::new();
            while !stopped.load(Ordering::SeqCst) && Instant::now() < until {
                let Ok((mut stream, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                };
                stream.set_nonblocking(false).unwrap();
                stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
                let Some(request) = read_request(&mut stream) else { continue };
                record.lock().unwrap().push(request.clone());
                match handler(&request) {
                    Answer::Send(bytes) => {
                        let _ = stream.write_all(&bytes);
                    }
                    Answer::Trickle { bytes, chunk, pause } => {
                        for part in bytes.chunks(chunk.max(1)) {
                            if stopped.load(Ordering::SeqCst) || stream.write_all(part).is_err() {
                                break;
                            }
                            std::thread::sleep(pause);
                        }
                    }
                    Answer::Hang => hanging.push(stream),
                }
            }
        });
        TestServer { addr, received, stop, thread: Some(thread) }
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The requests received so far.
    pub fn received(&self) -> Vec<Received> {
        self.received.lock().unwrap().clone()
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Reads one request (headers, then a `Content-Length` body).
fn read_request(stream: &mut TcpStream) -> Option<Received> {
    let mut data = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => data.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&data[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next()?.split_whitespace();
    let (method, target) = (request_line.next()?.to_string(), request_line.next()?.to_string());
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let length = headers.iter().find(|(n, _)| n == "content-length").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
    let mut body = data[head_end + 4..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return None,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    Some(Received { method, target, headers, body })
}

/// Where [`git_backend`] serves its repository.
pub const REPO_PATH: &str = "/repo.git";

/// Answers a smart-HTTP request for the repository at `repo` (non-bare or bare), served as
/// [`REPO_PATH`], by running `git http-backend`.
pub fn git_backend(repo: &Path, request: &Received) -> Vec<u8> {
    let (path, query) = request.target.split_once('?').unwrap_or((&request.target, ""));
    let Some(rest) = path.strip_prefix(REPO_PATH) else {
        return http_response("404 Not Found", &[], b"no such repository\n");
    };
    let mut child = std::process::Command::new("git")
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", repo.parent().unwrap())
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("PATH_INFO", format!("/{}{rest}", repo.file_name().unwrap().to_string_lossy()))
        .env("QUERY_STRING", query)
        .env("REQUEST_METHOD", &request.method)
        .env("CONTENT_TYPE", request.header("content-type").unwrap_or_default())
        .env("CONTENT_LENGTH", request.body.len().to_string())
        .env("GIT_PROTOCOL", request.header("git-protocol").unwrap_or_default())
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env_remove("GIT_DIR")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let body = request.body.clone();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&body);
    });
    let out = child.wait_with_output().unwrap().stdout;
    let _ = writer.join();
    let split = out.windows(4).position(|w| w == b"\r\n\r\n").map(|i| (i, 4));
    let (head_len, sep) = split.or_else(|| out.windows(2).position(|w| w == b"\n\n").map(|i| (i, 2))).unwrap();
    let head = String::from_utf8_lossy(&out[..head_len]).into_owned();
    let mut status = "200 OK".to_string();
    let mut headers = Vec::new();
    for line in head.lines() {
        let (name, value) = line.split_once(':').unwrap();
        if name.eq_ignore_ascii_case("status") {
            status = value.trim().to_string();
        } else {
            headers.push(format!("{}: {}", name.trim(), value.trim()));
        }
    }
    let headers: Vec<&str> = headers.iter().map(String::as_str).collect();
    http_response(&status, &headers, &out[head_len + sep..])
}

/// A whole HTTP/1.1 response that closes the connection.
pub fn http_response(status: &str, headers: &[&str], body: &[u8]) -> Vec<u8> {
    let mut out = format!("HTTP/1.1 {status}\r\n").into_bytes();
    for header in headers {
        out.extend_from_slice(format!("{header}\r\n").as_bytes());
    }
    out.extend_from_slice(format!("Content-Length: {}\r\nConnection: close\r\n\r\n", body.len()).as_bytes());
    out.extend_from_slice(body);
    out
}
