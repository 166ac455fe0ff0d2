//! The accept loop both HTTP listeners share (client port, admin port).

use std::{net::SocketAddr, time::Duration};

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// The first wait after a failed accept; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A listener that hands out connections until its stop token is cancelled.
pub(crate) struct Acceptor {
    listener: TcpListener,
    /// Which listener, for the log line of a failed accept.
    name: &'static str,
    backoff: Duration,
}

impl Acceptor {
    pub(crate) fn new(listener: TcpListener, name: &'static str) -> Self {
        Self {
            listener,
            name,
            backoff: FIRST_BACKOFF,
        }
    }

    /// The next connection (with `TCP_NODELAY` set), or `None` once `stop` is cancelled. A
    /// failed accept, usually EMFILE (out of file descriptors), waits and tries again: retrying
    /// at once would spin, and ending the loop would close the port for good.
    pub(crate) async fn next(
        &mut self,
        stop: &CancellationToken,
    ) -> Option<(TcpStream, SocketAddr)> {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return None,
                accepted = self.listener.accept() => match accepted {
                    Ok((tcp, remote)) => {
                        self.backoff = FIRST_BACKOFF;
                        let _ = tcp.set_nodelay(true);
                        return Some((tcp, remote));
                    }
                    Err(e) => {
                        tracing::warn!(listener = self.name, error = %e, backoff = ?self.backoff, "accept failed");
                        tokio::time::sleep(self.backoff).await;
                        self.backoff = (self.backoff * 2).min(MAX_BACKOFF);
                    }
                },
            }
        }
    }
}
