//! The threads a server process runs on: the shared runtime, and event loops of their own for listeners whose
//! every request would otherwise wake a worker of the shared runtime.

/// How many threads run a server process's tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Threads {
    /// One event loop on the main thread.
    One,
    /// A multi-threaded runtime, one worker per core.
    PerCore,
    /// A multi-threaded runtime with this many workers (more than one).
    Workers(usize),
}

impl Threads {
    /// The threads `worker_threads` asks for: 0 is one per core, 1 a single event loop. One loop is the cheapest
    /// per event when a host runs several processes: a multi-threaded runtime wakes a second worker (a futex call
    /// each side) for much of what arrives while it is idle, so that work can be stolen; measured with strace on a
    /// `serve` of 400 connections PINGing once a second, half a futex call per PING, none on one loop.
    pub fn workers(worker_threads: usize) -> Self {
        match worker_threads {
            0 => Self::PerCore,
            1 => Self::One,
            n => Self::Workers(n),
        }
    }

    /// Builds the runtime.
    pub fn runtime(self) -> std::io::Result<tokio::runtime::Runtime> {
        let mut builder = match self {
            Self::One => tokio::runtime::Builder::new_current_thread(),
            Self::PerCore => tokio::runtime::Builder::new_multi_thread(),
            Self::Workers(n) => {
                let mut builder = tokio::runtime::Builder::new_multi_thread();
                builder.worker_threads(n);
                builder
            }
        };
        builder.enable_all().build()
    }
}

/// Runs the future `task` makes on a thread named `name`, on a single-threaded event loop of its own; the receiver
/// gets its output, or an error if the loop could not be built (the sender is dropped unsent if the task panics).
pub(crate) fn on_own_loop<F, Fut, T>(
    name: String,
    task: F,
) -> std::io::Result<tokio::sync::oneshot::Receiver<anyhow::Result<T>>>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<T>>,
    T: Send + 'static,
{
    let (finished, receiver) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(name).spawn(move || {
        let ended = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
            Ok(runtime) => runtime.block_on(task()),
            Err(error) => Err(anyhow::Error::new(error).context("building its event loop")),
        };
        let _ = finished.send(ended);
    })?;
    Ok(receiver)
}
