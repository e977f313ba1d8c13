//! Waiting: the one polling helper. A check runs until it is done, fails, or the time is up;
//! what it last saw while pending is kept for the timeout's message.

use std::future::Future;
use std::time::Duration;

/// What one look found.
pub enum Poll<T, P> {
    Done(T),
    /// Not yet; what was seen, for the message if the time runs out.
    Pending(P),
    /// Stop waiting: it cannot happen.
    Failed(String),
}

/// How a wait ended.
pub enum Outcome<T, P> {
    Done(T),
    Failed(String),
    /// The time ran out; what the last look saw.
    TimedOut(P),
}

/// Looks every `every` until `check` is done or fails, for at most `timeout` (the first look is
/// at once; the last one at or after the deadline).
pub async fn until<T, P, F, Fut>(timeout: Duration, every: Duration, mut check: F) -> Outcome<T, P>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Poll<T, P>>,
{
    let now = tokio::time::Instant::now();
    // a timeout too large to add never ends the wait
    let deadline = now.checked_add(timeout);
    loop {
        match check().await {
            Poll::Done(t) => return Outcome::Done(t),
            Poll::Failed(message) => return Outcome::Failed(message),
            Poll::Pending(seen) if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) => return Outcome::TimedOut(seen),
            Poll::Pending(_) => tokio::time::sleep(every).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_wait_ends_done_failed_or_timed_out_with_the_last_look() {
        let mut looks = 0;
        let done = until(Duration::from_secs(10), Duration::from_secs(1), || {
            looks += 1;
            let n = looks;
            async move {
                if n == 3 {
                    Poll::Done(n)
                } else {
                    Poll::Pending(n)
                }
            }
        })
        .await;
        assert!(matches!(done, Outcome::Done(3)));

        let failed: Outcome<(), ()> =
            until(Duration::from_secs(10), Duration::from_secs(1), || async { Poll::Failed("gone".into()) }).await;
        assert!(matches!(failed, Outcome::Failed(m) if m == "gone"));

        let started = tokio::time::Instant::now();
        let mut seen = 0;
        let timed_out: Outcome<(), u32> = until(Duration::from_secs(5), Duration::from_secs(2), || {
            seen += 1;
            let n = seen;
            async move { Poll::Pending(n) }
        })
        .await;
        // looks at 0, 2, 4 and 6 s: the last one after the deadline
        assert!(matches!(timed_out, Outcome::TimedOut(4)), "four looks");
        assert_eq!(started.elapsed(), Duration::from_secs(6));
    }
}
