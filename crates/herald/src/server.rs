//! A listener's server (the push API, a gateway's internal listener): served on threads of its own or on the
//! caller's runtime, stopped gracefully on request, and watched for ending on its own.
//!
//! Why threads of their own: on the shared multi-threaded runtime, hyper wakes its own connection task when a
//! request's body arrives while the handler reads it, tokio takes that for a yield and wakes the idle second worker
//! to look for work, and every push paid for two context switches it did not need. On its own loop a push costs one
//! wake-up; the handler hands items to the hub, whose workers stay on the shared runtime. A process that is itself
//! one event loop (a logic node, see `logic.rs`) serves on the caller's runtime instead ([`Server::here`]).

use anyhow::Context;
use herald_http::HttpServing;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::config::Http;
use crate::runtime::on_own_loop;

/// A server running on one listener.
pub(crate) struct Server {
    name: &'static str,
    stop: CancellationToken,
    /// Cancelled when a serving thread ends before it was asked to stop (its listener failed): the alarm of
    /// [`crate::running::Running`].
    ended_early: CancellationToken,
    threads: Vec<oneshot::Receiver<anyhow::Result<()>>>,
}

impl Server {
    /// Serves `listener` from `threads` threads, each a single-threaded event loop taking connections from the same
    /// listener: `serve(listener, stop)` runs on each, and must end soon after `stop` is cancelled. A thread that
    /// ends before cancels `ended_early`.
    pub(crate) fn on_own_threads<F, Fut>(
        name: &'static str,
        listener: TcpListener,
        threads: usize,
        ended_early: CancellationToken,
        serve: F,
    ) -> anyhow::Result<Self>
    where
        F: Fn(TcpListener, CancellationToken) -> Fut + Clone + Send + 'static,
        Fut: Future<Output = anyhow::Result<()>>,
    {
        let mut server = Self::new(name, ended_early);
        let listener = listener.into_std()?;
        for index in 0..threads {
            let (serve, stop, ended_early) = (serve.clone(), server.stop.clone(), server.ended_early.clone());
            let started = listener.try_clone().and_then(|listener| {
                on_own_loop(format!("herald-{name}-{index}"), move || async move {
                    let served = serve(TcpListener::from_std(listener)?, stop.clone()).await;
                    if !stop.is_cancelled() {
                        ended_early.cancel();
                    }
                    served
                })
            });
            match started {
                Ok(receiver) => server.threads.push(receiver),
                Err(error) => {
                    // The threads already serving stop too: herald does not run with part of a listener.
                    server.stop.cancel();
                    return Err(error).with_context(|| format!("{name}: starting a thread"));
                }
            }
        }
        Ok(server)
    }

    /// Serves `listener` from a task on the current runtime, as [`Server::on_own_threads`] does from one thread.
    pub(crate) fn here<Fut>(
        name: &'static str,
        listener: TcpListener,
        ended_early: CancellationToken,
        serve: impl FnOnce(TcpListener, CancellationToken) -> Fut,
    ) -> Self
    where
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let mut server = Self::new(name, ended_early);
        let (finished, receiver) = oneshot::channel();
        let served = serve(listener, server.stop.clone());
        let (stop, ended_early) = (server.stop.clone(), server.ended_early.clone());
        tokio::spawn(async move {
            let served = served.await;
            if !stop.is_cancelled() {
                ended_early.cancel();
            }
            let _ = finished.send(served);
        });
        server.threads.push(receiver);
        server
    }

    fn new(name: &'static str, ended_early: CancellationToken) -> Self {
        Self {
            name,
            stop: CancellationToken::new(),
            ended_early,
            threads: Vec::new(),
        }
    }

    /// Stops taking connections, waits for the requests in progress, and reports how the server ended.
    pub(crate) async fn stop(self) -> anyhow::Result<()> {
        self.stop.cancel();
        for thread in self.threads {
            match thread.await {
                Ok(result) => result.with_context(|| self.name)?,
                Err(_) => tracing::warn!("{}: a thread ended without a result (it panicked)", self.name),
            }
        }
        Ok(())
    }
}

/// A server's answer once it ends.
pub(crate) type Served = std::pin::Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// How [`Server`] serves an axum router on a cleartext listener (the push API) with the timeouts of `http`,
/// stopping gracefully on `stop`.
pub(crate) fn http(
    router: axum::Router,
    http: Http,
) -> impl Fn(TcpListener, CancellationToken) -> Served + Clone + Send + 'static {
    move |listener, stop| {
        let serving = HttpServing {
            header_read_timeout: http.header_read_timeout,
            tls: None,
        };
        let router = router.clone();
        Box::pin(async move { Ok(herald_http::serve(listener, router, serving, stop).await?) })
    }
}
