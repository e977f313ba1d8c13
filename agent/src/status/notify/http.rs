//! The one outbound HTTP client of [`super`]: commit statuses and notifications leave through
//! it. Plain `http://` and `https://` (native roots, rustls with ring) are both allowed; every
//! exchange is bounded in time (connect, then the whole exchange) and the answer's body is read
//! up to [`MAX_RESPONSE_BODY`] and discarded.
//!
//! A URL may be a secret (a Slack incoming webhook is one) and a header may carry a token:
//! errors and `Debug` show only `scheme://host[:port]` and header names.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::header::{HeaderName, HeaderValue, USER_AGENT};
use http::{Method, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use url::Url;

/// The most of an answer's body that is read (and discarded); the rest is left unread.
pub const MAX_RESPONSE_BODY: usize = 64 << 10;
/// How long a TCP connect may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one whole exchange may take: connect, TLS, request, answer and its body.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The user agent of every outbound request.
pub fn user_agent() -> String {
    format!("driftless/{}", crate::VERSION)
}

/// One request to send, built by [`super::forge`] or [`super::hook`]: plain data, so the shape
/// of each provider's request is tested without a network.
#[derive(Clone, PartialEq, Eq)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub headers: Vec<(HeaderName, String)>,
    pub body: Vec<u8>,
}

impl Request {
    /// The value of a header (names compare case-insensitively, as `HeaderName`s are lowercase).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.as_str().eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// Neither the URL's path and query nor a header's value: either may be a secret.
impl fmt::Debug for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<&str> = self.headers.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("Request")
            .field("method", &self.method)
            .field("url", &redact(&self.url))
            .field("headers", &names)
            .field("body_len", &self.body.len())
            .finish()
    }
}

/// Why a request was not delivered. `target` is always [`redact`]ed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Not an absolute `http://` or `https://` URL with a host (the URL itself is not shown).
    #[error("invalid URL: it must be an absolute http:// or https:// URL")]
    InvalidUrl,
    /// The request could not be made from the settings (which part, never its value).
    #[error("invalid request: {0}")]
    InvalidRequest(&'static str),
    /// A header's value is not a valid header value (a token with a line break, say).
    #[error("{target}: invalid value for header {name}")]
    InvalidHeader { target: String, name: HeaderName },
    /// `https://` without any native root certificate to verify the server with.
    #[error("{target}: no TLS root certificates: {cause}")]
    Tls { target: String, cause: Arc<str> },
    /// The exchange did not finish in time.
    #[error("{target}: timed out after {}", humantime::format_duration(*.after))]
    Timeout { target: String, after: Duration },
    /// No connection (refused, unreachable, DNS, TLS handshake).
    #[error("{target}: could not connect: {cause}")]
    Connect { target: String, cause: String },
    /// The connection broke during the exchange.
    #[error("{target}: request failed: {cause}")]
    Request { target: String, cause: String },
    /// The server answered, but not with 2xx.
    #[error("{target}: answered {code}")]
    Status { target: String, code: StatusCode },
}

impl HttpError {
    /// Whether trying again may help: network errors, timeouts, 429 and 5xx.
    pub fn retryable(&self) -> bool {
        match self {
            HttpError::Timeout { .. } | HttpError::Connect { .. } | HttpError::Request { .. } => true,
            HttpError::Status { code, .. } => *code == StatusCode::TOO_MANY_REQUESTS || code.is_server_error(),
            HttpError::InvalidUrl | HttpError::InvalidRequest(_) | HttpError::InvalidHeader { .. } | HttpError::Tls { .. } => false,
        }
    }
}

/// `scheme://host[:port]` of a URL, which is all an error or a log line may show of it.
pub fn redact(url: &str) -> String {
    match Url::parse(url) {
        Ok(u) => match (u.host_str(), u.port()) {
            (Some(host), Some(port)) => format!("{}://{host}:{port}", u.scheme()),
            (Some(host), None) => format!("{}://{host}", u.scheme()),
            (None, _) => format!("{}://", u.scheme()),
        },
        Err(_) => "<invalid URL>".into(),
    }
}

/// The connect and overall timeouts of every exchange.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    pub request: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: CONNECT_TIMEOUT, request: REQUEST_TIMEOUT }
    }
}

type Body = Full<Bytes>;

/// The shared client: one connection pool for `https://`, one for `http://`. Cheap to clone.
#[derive(Clone)]
pub struct HttpClient {
    /// `Err` when no native root certificate could be loaded: `https://` then fails, `http://` works.
    https: Result<Client<HttpsConnector<HttpConnector>, Body>, Arc<str>>,
    plain: Client<HttpConnector, Body>,
    timeouts: Timeouts,
}

impl HttpClient {
    /// Loads the native root certificates once and builds both pools.
    pub fn new(timeouts: Timeouts) -> Self {
        // the TCP connector, with its connect timeout; `enforce_http(false)` lets TLS wrap it
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(timeouts.connect));
        tcp.enforce_http(false);
        // TLS over it, verified against the system's roots
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_native_roots()
            .map(|b| b.https_only().enable_http1().wrap_connector(tcp.clone()))
            .map(|connector| Client::builder(TokioExecutor::new()).build(connector))
            .map_err(|e| Arc::from(e.to_string()));
        let plain = Client::builder(TokioExecutor::new()).build(tcp);
        HttpClient { https, plain, timeouts }
    }

    /// Sends a request and reads (up to [`MAX_RESPONSE_BODY`] of) the answer; `Ok` only for 2xx.
    pub async fn send(&self, req: Request) -> Result<StatusCode, HttpError> {
        // the URL: absolute, http or https, with a host
        let url = Url::parse(&req.url).map_err(|_| HttpError::InvalidUrl)?;
        if url.host_str().is_none() || !matches!(url.scheme(), "http" | "https") {
            return Err(HttpError::InvalidUrl);
        }
        let target = redact(url.as_str());
        let uri: Uri = url.as_str().parse().map_err(|_| HttpError::InvalidUrl)?;
        // the request: headers marked sensitive (kept out of hyper's own debug output)
        let mut builder = http::Request::builder().method(req.method).uri(uri);
        let mut has_agent = false;
        for (name, value) in req.headers {
            let Ok(mut value) = HeaderValue::from_str(&value) else {
                return Err(HttpError::InvalidHeader { target, name });
            };
            value.set_sensitive(true);
            has_agent |= name == USER_AGENT;
            builder = builder.header(name, value);
        }
        if !has_agent {
            builder = builder.header(USER_AGENT, user_agent());
        }
        let request =
            builder.body(Full::new(Bytes::from(req.body))).map_err(|_| HttpError::InvalidRequest("the request could not be built"))?;
        // the exchange, bounded as a whole
        let exchange = async {
            let response = if url.scheme() == "https" {
                match &self.https {
                    Ok(client) => client.request(request).await,
                    Err(cause) => return Err(HttpError::Tls { target: target.clone(), cause: cause.clone() }),
                }
            } else {
                self.plain.request(request).await
            };
            let response = response.map_err(|e| classify(&target, &e))?;
            let code = response.status();
            drain(response.into_body()).await;
            Ok(code)
        };
        let code = match tokio::time::timeout(self.timeouts.request, exchange).await {
            Ok(result) => result?,
            Err(_) => return Err(HttpError::Timeout { target, after: self.timeouts.request }),
        };
        // the answer: 2xx or an error naming the code
        if code.is_success() {
            Ok(code)
        } else {
            Err(HttpError::Status { target, code })
        }
    }
}

/// A client error as [`HttpError::Connect`] or [`HttpError::Request`], with its innermost cause
/// (an I/O or TLS error: neither names the URL).
fn classify(target: &str, e: &hyper_util::client::legacy::Error) -> HttpError {
    let mut cause: &dyn std::error::Error = e;
    while let Some(inner) = cause.source() {
        cause = inner;
    }
    let cause = cause.to_string();
    if e.is_connect() {
        HttpError::Connect { target: target.into(), cause }
    } else {
        HttpError::Request { target: target.into(), cause }
    }
}

/// Reads an answer's body up to [`MAX_RESPONSE_BODY`] and drops it (a fully read body lets the
/// connection return to the pool).
async fn drain(mut body: Incoming) {
    let mut read = 0;
    while read < MAX_RESPONSE_BODY {
        match body.frame().await {
            Some(Ok(frame)) => read += frame.data_ref().map_or(0, Bytes::len),
            Some(Err(_)) | None => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_keeps_only_scheme_and_host() {
        assert_eq!(redact("https://hooks.slack.com/services/T0/B0/XXXX"), "https://hooks.slack.com");
        assert_eq!(redact("http://u:pw@127.0.0.1:8080/x?token=abc"), "http://127.0.0.1:8080");
        assert_eq!(redact("not a url"), "<invalid URL>");
    }

    #[test]
    fn debug_shows_no_header_value_nor_path() {
        let req = Request {
            method: Method::POST,
            url: "https://hooks.slack.com/services/T0/B0/XXXX".into(),
            headers: vec![(http::header::AUTHORIZATION, "Bearer tok-123".into())],
            body: b"{}".to_vec(),
        };
        let shown = format!("{req:?}");
        assert!(shown.contains("https://hooks.slack.com") && shown.contains("authorization"), "{shown}");
        assert!(!shown.contains("XXXX") && !shown.contains("tok-123"), "{shown}");
    }

    #[test]
    fn only_network_errors_429_and_5xx_are_retried() {
        let status = |code: u16| HttpError::Status { target: "http://h".into(), code: StatusCode::from_u16(code).unwrap() };
        assert!(status(500).retryable() && status(503).retryable() && status(429).retryable());
        assert!(!status(404).retryable() && !status(401).retryable() && !status(422).retryable());
        assert!(HttpError::Timeout { target: "http://h".into(), after: Duration::from_secs(1) }.retryable());
        assert!(HttpError::Connect { target: "http://h".into(), cause: "refused".into() }.retryable());
        assert!(!HttpError::InvalidUrl.retryable());
    }

    #[tokio::test]
    async fn bad_urls_are_refused_without_showing_them() {
        let client = HttpClient::new(Timeouts::default());
        for url in ["ftp://host/secret-path", "/relative/secret-path", "mailto:secret-path@example.com"] {
            let req = Request { method: Method::POST, url: url.into(), headers: vec![], body: vec![] };
            let err = client.send(req).await.unwrap_err();
            assert!(matches!(err, HttpError::InvalidUrl), "{url}: {err}");
            assert!(!err.to_string().contains("secret-path"), "{err}");
        }
    }
}
