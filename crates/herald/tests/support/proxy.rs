//! A TCP proxy between a client and herald that a test can cut: every connection through it is closed at once,
//! as a network path that fails would, while the proxy keeps taking new ones.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::AbortHandle;

/// A proxy on a free loopback port to one address; stops when dropped.
pub struct Proxy {
    pub addr: SocketAddr,
    accepted: Arc<AtomicUsize>,
    open: Arc<Mutex<Vec<AbortHandle>>>,
    listener: AbortHandle,
}

impl Proxy {
    /// Starts a proxy to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let open: Arc<Mutex<Vec<AbortHandle>>> = Arc::default();
        let (counter, pairs) = (Arc::clone(&accepted), Arc::clone(&open));
        let listener = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                counter.fetch_add(1, Ordering::SeqCst);
                let pair = tokio::spawn(async move {
                    if let Ok(mut upstream) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                    }
                });
                let mut pairs = pairs.lock().unwrap();
                pairs.retain(|pair| !pair.is_finished());
                pairs.push(pair.abort_handle());
            }
        })
        .abort_handle();
        Self {
            addr,
            accepted,
            open,
            listener,
        }
    }

    /// Closes every connection through the proxy (both sides); returns how many were open.
    pub fn cut(&self) -> usize {
        let mut pairs = self.open.lock().unwrap();
        let open = pairs.iter().filter(|pair| !pair.is_finished()).count();
        for pair in pairs.drain(..) {
            pair.abort();
        }
        open
    }

    /// Connections taken since the start.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.listener.abort();
        self.cut();
    }
}
