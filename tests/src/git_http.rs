//! A smart-HTTP git server for tests, on 127.0.0.1: serves one repository (e.g. a
//! [`GitFixture`](crate::GitFixture), bare or not) through `git http-backend` run as a CGI, behind
//! HTTP Basic auth with a token as the password, with an optional delay before answering (to
//! hold a client's first fetch back). Every request is logged so tests can see what the client
//! did (and whether it authenticated).
//!
//! ```text
//! let repo = GitFixture::new();
//! repo.write("a.yaml", configmap("a", "1"));
//! repo.commit("a");
//! let server = GitHttpServer::start(repo.path(), "s3cret-token").await;
//! // clone http://<anyuser>:s3cret-token@127.0.0.1:<port>/repo.git, or give the token by file
//! let url = server.url();
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::Engine;
use tokio::io::AsyncWriteExt;

/// The name the repository is served under: `http://127.0.0.1:<port>/repo.git`.
pub const REPO_PATH: &str = "/repo.git";

/// The most a request body may be (a fetch negotiation is a few KiB).
const MAX_REQUEST: usize = 64 << 20;

/// One request the server answered.
#[derive(Clone, Debug)]
pub struct Logged {
    pub method: String,
    /// The path and query.
    pub uri: String,
    /// Whether it carried the right token.
    pub authorized: bool,
    pub status: u16,
}

struct Inner {
    /// The repository's parent directory (GIT_PROJECT_ROOT) and its directory name.
    root: PathBuf,
    dir_name: String,
    token: String,
    /// Requests still to be delayed, and by how long.
    delayed_requests: AtomicU64,
    delay_ms: AtomicU64,
    log: Mutex<Vec<Logged>>,
}

/// The server; stops when dropped.
pub struct GitHttpServer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    task: tokio::task::JoinHandle<()>,
}

impl GitHttpServer {
    /// Serves the repository at `repo` (its working tree with `.git` inside, or a bare one) as
    /// [`REPO_PATH`], to requests whose Basic-auth password is `token` (any username). Must be
    /// called within a Tokio runtime (a multi-threaded one if the test blocks its thread).
    pub async fn start(repo: &Path, token: &str) -> Self {
        let repo = repo.canonicalize().unwrap_or_else(|e| panic!("{}: {e}", repo.display()));
        let root = repo.parent().expect("the repository has a parent directory").to_path_buf();
        let dir_name = repo.file_name().expect("the repository has a name").to_string_lossy().into_owned();
        let inner = Arc::new(Inner {
            root,
            dir_name,
            token: token.to_string(),
            delayed_requests: AtomicU64::new(0),
            delay_ms: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local address");
        let app = Router::new().fallback(handle).with_state(inner.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        GitHttpServer { addr, inner, task }
    }

    /// `http://127.0.0.1:<port>/repo.git` (no credentials).
    pub fn url(&self) -> String {
        format!("http://{}{REPO_PATH}", self.addr)
    }

    /// The URL with `user:token@` in it.
    pub fn url_with_credentials(&self, user: &str) -> String {
        format!("http://{user}:{}@{}{REPO_PATH}", self.inner.token, self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Holds each of the next `requests` requests back by `delay` before answering it.
    pub fn delay_next(&self, requests: u64, delay: Duration) {
        self.inner.delay_ms.store(delay.as_millis() as u64, Ordering::SeqCst);
        self.inner.delayed_requests.store(requests, Ordering::SeqCst);
    }

    /// Every request answered so far, in order.
    pub fn requests(&self) -> Vec<Logged> {
        self.inner.log.lock().unwrap().clone()
    }

    /// Requests that read the ref advertisement (`GET .../info/refs`) with the right token: one
    /// per remote check of a client.
    pub fn authorized_ref_checks(&self) -> usize {
        self.requests().iter().filter(|r| r.authorized && r.method == "GET" && r.uri.contains("/info/refs")).count()
    }
}

impl Drop for GitHttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether the request's Basic credentials carry the token as password.
fn authorized(headers: &HeaderMap, token: &str) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    (password == token).then(|| user.to_string())
}

async fn handle(State(inner): State<Arc<Inner>>, request: Request) -> Response {
    let take_delay = inner.delayed_requests.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if take_delay {
        tokio::time::sleep(Duration::from_millis(inner.delay_ms.load(Ordering::SeqCst))).await;
    }
    let method = request.method().as_str().to_string();
    let uri = request.uri().path_and_query().map(|p| p.as_str().to_string()).unwrap_or_default();
    let user = authorized(request.headers(), &inner.token);
    let is_authorized = user.is_some();
    let response = match user {
        None => {
            let mut r = (StatusCode::UNAUTHORIZED, "authentication required\n").into_response();
            r.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"driftless-tests\""));
            r
        }
        Some(user) => cgi(&inner, &user, request).await,
    };
    inner.log.lock().unwrap().push(Logged { method, uri, authorized: is_authorized, status: response.status().as_u16() });
    response
}

/// Runs `git http-backend` for one request.
async fn cgi(inner: &Inner, user: &str, request: Request) -> Response {
    let path = request.uri().path().to_string();
    let Some(rest) = path.strip_prefix(REPO_PATH).filter(|r| r.is_empty() || r.starts_with('/')) else {
        return (StatusCode::NOT_FOUND, "no such repository\n").into_response();
    };
    let query = request.uri().query().unwrap_or_default().to_string();
    let method = request.method().as_str().to_string();
    let headers = request.headers().clone();
    let body = match axum::body::to_bytes(request.into_body(), MAX_REQUEST).await {
        Ok(b) => b,
        Err(e) => return (StatusCode::PAYLOAD_TOO_LARGE, format!("{e}\n")).into_response(),
    };
    let header_text = |name: &HeaderName| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let mut command = tokio::process::Command::new("git");
    command
        .arg("http-backend")
        .env("GIT_PROJECT_ROOT", &inner.root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("PATH_INFO", format!("/{}{rest}", inner.dir_name))
        .env("QUERY_STRING", &query)
        .env("REQUEST_METHOD", &method)
        .env("CONTENT_TYPE", header_text(&header::CONTENT_TYPE))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("REMOTE_USER", user)
        .env("REMOTE_ADDR", "127.0.0.1")
        .env("SERVER_PROTOCOL", "HTTP/1.1")
        .env("GATEWAY_INTERFACE", "CGI/1.1")
        .env_remove("GIT_DIR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let encoding = header_text(&header::CONTENT_ENCODING);
    if !encoding.is_empty() {
        command.env("HTTP_CONTENT_ENCODING", encoding);
    }
    let protocol = header_text(&HeaderName::from_static("git-protocol"));
    if !protocol.is_empty() {
        command.env("GIT_PROTOCOL", protocol);
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("git http-backend: {e}\n")).into_response(),
    };
    let mut stdin = child.stdin.take().expect("piped stdin");
    let writer = tokio::spawn(async move {
        let _ = stdin.write_all(&body).await;
        // dropping stdin closes it
    });
    let output = match child.wait_with_output().await {
        Ok(o) => o,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, format!("git http-backend: {e}\n")).into_response(),
    };
    let _ = writer.await;
    parse_cgi(&output.stdout).unwrap_or_else(|| {
        let stderr = String::from_utf8_lossy(&output.stderr);
        (StatusCode::BAD_GATEWAY, format!("malformed answer from git http-backend: {stderr}\n")).into_response()
    })
}

/// A CGI answer: headers (`Status:` gives the code), a blank line, the body.
fn parse_cgi(out: &[u8]) -> Option<Response> {
    let (head_len, sep_len) = find(out, b"\r\n\r\n").map(|i| (i, 4)).or_else(|| find(out, b"\n\n").map(|i| (i, 2)))?;
    let head = std::str::from_utf8(&out[..head_len]).ok()?;
    let body = out[head_len + sep_len..].to_vec();
    let mut status = StatusCode::OK;
    let mut response = Response::new(Body::from(body));
    for line in head.lines() {
        let (name, value) = line.split_once(':')?;
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next()?.parse::<u16>().ok()?;
            status = StatusCode::from_u16(code).ok()?;
        } else if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name.trim().as_bytes()), HeaderValue::from_str(value)) {
            response.headers_mut().append(n, v);
        }
    }
    *response.status_mut() = status;
    Some(response)
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
