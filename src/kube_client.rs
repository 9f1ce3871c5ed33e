//! The Kubernetes API client, with an optional client-side rate limit (`--kube-api-qps`,
//! `--kube-api-burst`) for clusters whose API server is shared with workloads that matter more
//! than a key's latency.

use std::{
    future::Future,
    num::NonZeroU32,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll, ready},
};

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use kube::{Client, client::ClientBuilder};
use tower::{Layer, Service};

/// Sustained requests per second and the burst above it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    pub per_second: NonZeroU32,
    pub burst: NonZeroU32,
}

impl RateLimit {
    /// The limit the flags ask for: none when `per_second` is 0; a burst of 0 allows no more
    /// than one request at a time.
    pub fn from_flags(per_second: u32, burst: u32) -> Option<Self> {
        let per_second = NonZeroU32::new(per_second)?;
        Some(Self {
            per_second,
            burst: NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN),
        })
    }
}

/// A client for `config`, each of whose requests first waits for the limit when there is one.
pub fn client(config: kube::Config, limit: Option<RateLimit>) -> kube::Result<Client> {
    let builder = ClientBuilder::try_from(config)?;
    Ok(match limit {
        None => builder.build(),
        Some(limit) => builder.with_layer(&RateLimitLayer::new(limit)).build(),
    })
}

#[derive(Clone)]
struct RateLimitLayer {
    limiter: Arc<DefaultDirectRateLimiter>,
}

impl RateLimitLayer {
    fn new(limit: RateLimit) -> Self {
        let quota = Quota::per_second(limit.per_second).allow_burst(limit.burst);
        Self {
            limiter: Arc::new(RateLimiter::direct(quota)),
        }
    }
}

impl<S> Layer<S> for RateLimitLayer {
    type Service = RateLimited<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimited {
            inner,
            limiter: self.limiter.clone(),
            waiting: None,
            permitted: false,
        }
    }
}

/// Ready only once the limiter grants a request. The client queues its requests in front of
/// this service, so they wait their turn in order and no request is dropped.
struct RateLimited<S> {
    inner: S,
    limiter: Arc<DefaultDirectRateLimiter>,
    waiting: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
    /// Granted and not yet used by a call.
    permitted: bool,
}

impl<S: Service<R>, R> Service<R> for RateLimited<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if !self.permitted {
            let waiting = self.waiting.get_or_insert_with(|| {
                let limiter = self.limiter.clone();
                Box::pin(async move { limiter.until_ready().await })
            });
            ready!(waiting.as_mut().poll(cx));
            self.waiting = None;
            self.permitted = true;
        }
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        self.permitted = false;
        self.inner.call(request)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn zero_qps_means_no_limit() {
        assert_eq!(RateLimit::from_flags(0, 100), None);
        assert_eq!(
            RateLimit::from_flags(20, 0).map(|l| (l.per_second.get(), l.burst.get())),
            Some((20, 1))
        );
    }

    /// A service that answers at once and counts its calls.
    #[derive(Default)]
    struct Counting(usize);

    impl Service<()> for Counting {
        type Response = ();
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<(), Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, (): ()) -> Self::Future {
            self.0 += 1;
            std::future::ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn requests_beyond_the_burst_wait_for_the_rate() {
        let layer = RateLimitLayer::new(RateLimit {
            per_second: NonZeroU32::MIN,
            burst: NonZeroU32::MIN.saturating_add(1),
        });
        let mut service = layer.layer(Counting::default());
        for _ in 0..2 {
            let ready = std::future::poll_fn(|cx| service.poll_ready(cx)).await;
            assert!(ready.is_ok());
            assert!(service.call(()).await.is_ok());
        }
        assert_eq!(service.inner.0, 2, "the burst passes at once");
        let next = std::future::poll_fn(|cx| service.poll_ready(cx));
        let next = tokio::time::timeout(Duration::from_millis(200), next).await;
        assert!(
            next.is_err(),
            "a third request within the second was let through"
        );
    }
}
