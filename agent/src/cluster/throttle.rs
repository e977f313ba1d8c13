//! The API client's shared throttle. Every task of the process (applies, dry-runs, prunes,
//! watches, status writes) draws from one budget of requests in flight: it halves when the
//! server answers 429 Too Many Requests and grows back by one for each budget's worth of answered
//! requests (additive increase, multiplicative decrease), and while a 429's `Retry-After` runs no
//! request of the process is sent. Requests backing off each on its own would keep the server's
//! queues full; one budget lets a sync under API Priority and Fairness slow down to what its
//! priority level serves instead of failing.
//!
//! Each request is retried here on 429, 503 and 504 (503 and 504 after `Retry-After`, or a
//! doubling delay), at most [`MAX_ATTEMPTS`] times; the client's request timeout around this
//! layer bounds the whole, so a caller's deadline holds.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderMap, Request, Response, StatusCode};
use kube::client::Body;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt};

/// The most requests in flight at once (the budget starts there).
pub const MAX_IN_FLIGHT: usize = 64;

/// Attempts of one request, the first included.
pub const MAX_ATTEMPTS: u32 = 10;

/// The pause after a 429 without a usable `Retry-After`.
const DEFAULT_RETRY_AFTER: Duration = Duration::from_secs(1);

/// The longest `Retry-After` honoured (a longer one is cut to it).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// The shared budget; cheap to clone, every clone is the same budget.
#[derive(Clone, Debug)]
pub struct Throttle {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    /// Woken when a request ends, the budget grows or a pause ends.
    changed: Notify,
}

#[derive(Debug)]
struct State {
    /// Requests allowed in flight now.
    limit: usize,
    in_flight: usize,
    /// Answered requests since the budget last changed.
    answered: usize,
    /// No request is sent before this (a 429's `Retry-After`).
    paused_until: Option<Instant>,
    /// 429s answered to this process.
    rejected: u64,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            shared: Arc::new(Shared {
                state: Mutex::new(State { limit: MAX_IN_FLIGHT, in_flight: 0, answered: 0, paused_until: None, rejected: 0 }),
                changed: Notify::new(),
            }),
        }
    }
}

/// One request in flight; gives its place back when dropped.
struct Permit(Throttle);

impl Drop for Permit {
    fn drop(&mut self) {
        self.0.lock().in_flight -= 1;
        self.0.shared.changed.notify_waiters();
    }
}

impl Throttle {
    fn lock(&self) -> MutexGuard<'_, State> {
        // the state stays consistent at every step, so a panic elsewhere leaves it usable
        self.shared.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Requests allowed in flight now.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// 429s answered to this process so far.
    pub fn rejected(&self) -> u64 {
        self.lock().rejected
    }

    /// Waits for a place in the budget, and for any pause to end.
    async fn acquire(&self) -> Permit {
        loop {
            // registered before the check, so a change between the check and the wait wakes it
            let changed = self.shared.changed.notified();
            let paused_until = {
                let mut state = self.lock();
                match state.paused_until {
                    Some(until) if until > Instant::now() => Some(until),
                    _ if state.in_flight < state.limit => {
                        state.in_flight += 1;
                        return Permit(self.clone());
                    }
                    _ => None,
                }
            };
            match paused_until {
                Some(until) => tokio::time::sleep_until(until).await,
                None => changed.await,
            }
        }
    }

    /// A 429: pause every request for `retry_after`, and halve the budget once per pause (the
    /// 429s of one burst are one signal, not many).
    fn rejected_for(&self, retry_after: Duration) {
        let mut state = self.lock();
        let now = Instant::now();
        state.rejected += 1;
        if state.paused_until.is_none_or(|until| until <= now) {
            state.limit = (state.limit / 2).max(1);
            state.answered = 0;
        }
        let until = now + retry_after;
        state.paused_until = Some(state.paused_until.map_or(until, |held| held.max(until)));
    }

    /// Any other answer: one budget's worth of them grows the budget by one.
    fn answered(&self) {
        let mut state = self.lock();
        state.answered += 1;
        if state.answered >= state.limit && state.limit < MAX_IN_FLIGHT {
            state.limit += 1;
            state.answered = 0;
            drop(state);
            self.shared.changed.notify_waiters();
        }
    }
}

/// Puts a client service behind the throttle (the service must be `Clone`: put a buffer under
/// it).
#[derive(Clone, Debug, Default)]
pub struct ThrottleLayer(pub Throttle);

impl<S> Layer<S> for ThrottleLayer {
    type Service = Throttled<S>;
    fn layer(&self, inner: S) -> Throttled<S> {
        Throttled { inner, throttle: self.0.clone() }
    }
}

/// A client service behind the throttle.
#[derive(Clone, Debug)]
pub struct Throttled<S> {
    inner: S,
    throttle: Throttle,
}

/// Whether an answer is worth another attempt.
fn retryable(status: StatusCode) -> bool {
    matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT)
}

/// `Retry-After` in seconds (the form the API server sends), cut to [`MAX_RETRY_AFTER`].
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds).min(MAX_RETRY_AFTER))
}

/// The delay before attempt `attempt + 1` of a 503 or 504 without `Retry-After`: 250 ms, doubling
/// up to 8 s.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250u64.saturating_mul(1 << attempt.saturating_sub(1).min(5)))
}

/// A copy of a request for its next attempt, when its body can be copied (every body the
/// client sends but a streamed one can).
fn copy(request: &Request<Body>) -> Option<Request<Body>> {
    let mut copy = Request::new(request.body().try_clone()?);
    *copy.method_mut() = request.method().clone();
    *copy.uri_mut() = request.uri().clone();
    *copy.version_mut() = request.version();
    *copy.headers_mut() = request.headers().clone();
    *copy.extensions_mut() = request.extensions().clone();
    Some(copy)
}

impl<S, B> Service<Request<Body>> for Throttled<S>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone + Send + 'static,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = Response<B>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Response<B>, BoxError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        // readiness is awaited on the clone that sends the request, after the throttle's wait
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        let mut inner = self.inner.clone();
        let throttle = self.throttle.clone();
        Box::pin(async move {
            let mut request = request;
            let mut attempt = 1;
            loop {
                let next = if attempt < MAX_ATTEMPTS { copy(&request) } else { None };
                let permit = throttle.acquire().await;
                let response = inner.ready().await.map_err(Into::into)?.call(request).await.map_err(Into::into)?;
                drop(permit);
                let status = response.status();
                let wait = retry_after(response.headers());
                if status == StatusCode::TOO_MANY_REQUESTS {
                    throttle.rejected_for(wait.unwrap_or(DEFAULT_RETRY_AFTER));
                } else {
                    throttle.answered();
                }
                match next {
                    Some(next) if retryable(status) => {
                        tracing::debug!(%status, attempt, uri = %next.uri().path(), "the API server asked to retry");
                        if status != StatusCode::TOO_MANY_REQUESTS {
                            tokio::time::sleep(wait.unwrap_or_else(|| backoff(attempt))).await;
                        }
                        request = next;
                        attempt += 1;
                    }
                    _ => return Ok(response),
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A server that answers 429 (Retry-After 2) to every request while `reject` is above zero,
    /// counting down, and 200 after; it records when each request arrived and the most in flight.
    #[derive(Clone)]
    struct Server {
        reject: Arc<AtomicUsize>,
        log: Arc<Mutex<Vec<(Instant, StatusCode)>>>,
        in_flight: Arc<AtomicUsize>,
        most: Arc<AtomicUsize>,
        answer: StatusCode,
    }

    impl Server {
        fn new(reject: usize, answer: StatusCode) -> Self {
            Server {
                reject: Arc::new(AtomicUsize::new(reject)),
                log: Arc::default(),
                in_flight: Arc::default(),
                most: Arc::default(),
                answer,
            }
        }
    }

    impl Service<Request<Body>> for Server {
        type Response = Response<()>;
        type Error = BoxError;
        type Future = Pin<Box<dyn Future<Output = Result<Response<()>, BoxError>> + Send>>;
        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
            Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Body>) -> Self::Future {
            let server = self.clone();
            Box::pin(async move {
                let now = server.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
                server.most.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
                server.in_flight.fetch_sub(1, Ordering::SeqCst);
                let rejected = server.reject.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
                let status = if rejected { server.answer } else { StatusCode::OK };
                server.log.lock().unwrap().push((Instant::now(), status));
                let mut response = Response::new(());
                *response.status_mut() = status;
                if rejected {
                    response.headers_mut().insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("2"));
                }
                Ok(response)
            })
        }
    }

    fn get() -> Request<Body> {
        Request::get("/api/v1/namespaces/a/configmaps/x").body(Body::from(Vec::new())).unwrap()
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_pauses_every_request_for_its_retry_after_and_halves_the_budget() {
        let server = Server::new(5, StatusCode::TOO_MANY_REQUESTS);
        let throttle = Throttle::default();
        let service = ThrottleLayer(throttle.clone()).layer(server.clone());
        let began = Instant::now();
        let calls = (0..20).map(|_| service.clone().oneshot(get()));
        let answers = futures::future::join_all(calls).await;
        assert!(answers.iter().all(|a| a.as_ref().is_ok_and(|r| r.status() == StatusCode::OK)), "every request ends 200");
        let log = server.log.lock().unwrap().clone();
        assert_eq!(log.len(), 25, "20 requests and 5 retries: {log:?}");
        // after the last 429, nothing reached the server for the 2 s it asked for
        let last_429 = log.iter().filter(|(_, s)| *s == StatusCode::TOO_MANY_REQUESTS).map(|(at, _)| *at).max().unwrap();
        let first_after = log.iter().filter(|(at, _)| *at > last_429).map(|(at, _)| *at).min().unwrap();
        assert!(first_after - last_429 >= Duration::from_secs(2) - Duration::from_millis(10), "{:?}", first_after - last_429);
        assert!(began.elapsed() >= Duration::from_secs(2));
        // the 5 429s of one burst halved the budget once, then the answers after grew it by one
        assert_eq!(throttle.rejected(), 5);
        assert_eq!(throttle.limit(), MAX_IN_FLIGHT / 2);
    }

    #[tokio::test(start_paused = true)]
    async fn the_budget_bounds_requests_in_flight_and_grows_back() {
        let server = Server::new(0, StatusCode::OK);
        let throttle = Throttle::default();
        for _ in 0..6 {
            throttle.rejected_for(Duration::ZERO);
        }
        assert_eq!(throttle.limit(), 1, "64 halved six times");
        let service = ThrottleLayer(throttle.clone()).layer(server.clone());
        let answers = futures::future::join_all((0..10).map(|_| service.clone().oneshot(get()))).await;
        assert!(answers.iter().all(Result::is_ok));
        // one in flight while the budget was 1, then the answers grew it: 1 answered -> 2, 2 more
        // -> 3, 3 more -> 4, and the last 4 of the 10 -> 5
        assert_eq!(throttle.limit(), 5);
        assert!(server.most.load(Ordering::SeqCst) <= 4, "most in flight {}", server.most.load(Ordering::SeqCst));
        assert!(server.most.load(Ordering::SeqCst) >= 2, "the budget grew while they ran");
    }

    #[tokio::test(start_paused = true)]
    async fn a_503_is_retried_after_its_retry_after_and_attempts_are_bounded() {
        let server = Server::new(100, StatusCode::SERVICE_UNAVAILABLE);
        let throttle = Throttle::default();
        let service = ThrottleLayer(throttle.clone()).layer(server.clone());
        let began = Instant::now();
        let answer = service.oneshot(get()).await.unwrap();
        assert_eq!(answer.status(), StatusCode::SERVICE_UNAVAILABLE, "the last answer is handed back");
        assert_eq!(server.log.lock().unwrap().len(), MAX_ATTEMPTS as usize);
        assert!(began.elapsed() >= Duration::from_secs(2) * (MAX_ATTEMPTS - 1), "Retry-After honoured between attempts");
        assert_eq!(throttle.limit(), MAX_IN_FLIGHT, "only a 429 shrinks the budget");
    }

    #[tokio::test(start_paused = true)]
    async fn the_request_timeout_around_the_throttle_bounds_the_retries() {
        let server = Server::new(100, StatusCode::TOO_MANY_REQUESTS);
        let service = tower::timeout::TimeoutLayer::new(Duration::from_secs(5)).layer(ThrottleLayer::default().layer(server.clone()));
        let began = Instant::now();
        let answer = service.oneshot(get()).await;
        assert!(answer.is_err(), "timed out");
        assert!(began.elapsed() < Duration::from_secs(6), "{:?}", began.elapsed());
        assert_eq!(server.log.lock().unwrap().len(), 3, "attempts at 0 s, 2 s and 4 s");
    }

    #[test]
    fn retry_after_reads_seconds_and_is_capped() {
        let headers = |v: &'static str| HeaderMap::from_iter([(http::header::RETRY_AFTER, http::HeaderValue::from_static(v))]);
        assert_eq!(retry_after(&headers("1")), Some(Duration::from_secs(1)));
        assert_eq!(retry_after(&headers("3600")), Some(MAX_RETRY_AFTER));
        assert_eq!(retry_after(&headers("Wed, 21 Oct 2015 07:28:00 GMT")), None);
        assert_eq!(retry_after(&HeaderMap::new()), None);
        assert_eq!(backoff(1), Duration::from_millis(250));
        assert_eq!(backoff(3), Duration::from_secs(1));
        assert_eq!(backoff(30), Duration::from_secs(8));
    }
}
