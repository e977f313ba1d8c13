//! The write fence of the API client: while this replica does not hold the leader lease (or its
//! renew deadline passed), every request but a read and the lease's own renewal fails before it
//! is sent. One place for every writer (applies, deletes, parents, annotations, Events), so no
//! task that runs on after a lost lease, or after the process was paused, can write.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use http::{Method, Request};
use kube::client::Body;
use tower::{BoxError, Layer, Service};

/// Until when this replica may write: every write checks it, so a leader that could not renew
/// stops writing at the renew deadline even if a task of it runs on (after a pause, say) before
/// the loops are stopped. Without leader election it never closes.
#[derive(Clone, Debug, Default)]
pub struct Fence {
    /// `None`: no election, always open.
    until: Option<Arc<Mutex<Option<Instant>>>>,
}

impl Fence {
    /// A fence that opens only while a lease is held.
    pub fn elected() -> Self {
        Fence { until: Some(Default::default()) }
    }

    /// Writing is allowed until `deadline`.
    pub fn lead_until(&self, deadline: Instant) {
        if let Some(until) = &self.until {
            *until.lock().unwrap_or_else(|p| p.into_inner()) = Some(deadline);
        }
    }

    /// Writing stops now.
    pub fn stop(&self) {
        if let Some(until) = &self.until {
            *until.lock().unwrap_or_else(|p| p.into_inner()) = None;
        }
    }

    /// Whether a write may be sent now.
    pub fn is_open(&self) -> bool {
        match &self.until {
            None => true,
            Some(until) => until.lock().unwrap_or_else(|p| p.into_inner()).is_some_and(|d| Instant::now() < d),
        }
    }
}

/// Wraps a client service in the fence.
#[derive(Clone, Debug)]
pub struct FenceLayer(pub Fence);

impl<S> Layer<S> for FenceLayer {
    type Service = Fenced<S>;
    fn layer(&self, inner: S) -> Fenced<S> {
        Fenced { inner, fence: self.0.clone() }
    }
}

/// A client service behind the fence.
#[derive(Clone, Debug)]
pub struct Fenced<S> {
    inner: S,
    fence: Fence,
}

/// Refused by the fence: this replica may not write now.
#[derive(Debug, thiserror::Error)]
#[error("not writing: this replica does not hold the leader lease")]
pub struct NotLeader;

/// Whether a request may pass a closed fence: reads, and the Lease that decides who leads.
pub fn passes_closed(method: &Method, path: &str) -> bool {
    method == Method::GET || (path.starts_with("/apis/coordination.k8s.io/") && path.contains("/leases"))
}

impl<S> Service<Request<Body>> for Fenced<S>
where
    S: Service<Request<Body>>,
    S::Error: Into<BoxError>,
    S::Future: Send + 'static,
    S::Response: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, request: Request<Body>) -> Self::Future {
        if !self.fence.is_open() && !passes_closed(request.method(), request.uri().path()) {
            return Box::pin(std::future::ready(Err(Box::new(NotLeader) as BoxError)));
        }
        let response = self.inner.call(request);
        Box::pin(async move { response.await.map_err(Into::into) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_fence_closes_at_its_deadline_and_on_stop() {
        assert!(Fence::default().is_open(), "without election, always open");
        let fence = Fence::elected();
        assert!(!fence.is_open(), "closed until a lease is held");
        fence.lead_until(Instant::now() + Duration::from_secs(10));
        assert!(fence.is_open());
        fence.lead_until(Instant::now());
        assert!(!fence.is_open(), "closed at the deadline");
        fence.lead_until(Instant::now() + Duration::from_secs(10));
        fence.stop();
        assert!(!fence.is_open());
    }

    #[test]
    fn a_closed_fence_lets_reads_and_the_lease_through_only() {
        assert!(passes_closed(&Method::GET, "/api/v1/namespaces/a/configmaps"));
        assert!(passes_closed(&Method::PUT, "/apis/coordination.k8s.io/v1/namespaces/driftless-system/leases/driftless"));
        assert!(!passes_closed(&Method::PATCH, "/api/v1/namespaces/a/configmaps/x"));
        assert!(!passes_closed(&Method::POST, "/api/v1/namespaces/a/events"));
        assert!(!passes_closed(&Method::DELETE, "/apis/apps/v1/namespaces/a/deployments/web"));
    }
}
