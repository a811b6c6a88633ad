//! A deliberately slow door in front of PostgreSQL: a TCP proxy on 127.0.0.1 that answers nobody while
//! the herd arrives, then lets connections through slowly.
//!
//! Owns [`SlowDoor`]. The boot storm points its workers at the door, so the store is slow to accept
//! connections on purpose, not by luck of the machine's load, as a busy or restarting database was for
//! the herd of containers in incident 8:
//! - for its first `stall` after opening, every connection is held past the client's connect limit
//!   (`pool_create`) and then closed unanswered: every first boot attempt of the herd fails;
//! - after that, each connection is held for a random time under a third of that limit, then passed
//!   through untouched.
//!
//! So a worker that gives up after one try always fails its boot, and one that retries with backoff and
//! jitter always boots: the outcome does not depend on luck either way.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::ChaosError;

/// What the door did so far.
#[derive(Debug, Default)]
struct Counts {
    connections: AtomicUsize,
    /// Held longer than the client's connect limit: attempts a client without retries would lose.
    held_past_limit: AtomicUsize,
}

/// A running door. Dropping it stops accepting; connections already through keep flowing until closed.
pub struct SlowDoor {
    address: SocketAddr,
    counts: Arc<Counts>,
    acceptor: JoinHandle<()>,
}

impl SlowDoor {
    /// Opens a door to `upstream` that turns everyone away for `stall`, then is merely slow (see the
    /// module docs). `client_limit` is how long a client waits for a connection before giving up.
    pub async fn open(
        upstream: SocketAddr,
        stall: Duration,
        client_limit: Duration,
    ) -> Result<Self, ChaosError> {
        let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .map_err(|e| ChaosError::Setup(format!("slow door: cannot listen: {e}")))?;
        let address = listener
            .local_addr()
            .map_err(|e| ChaosError::Setup(format!("slow door: no local address: {e}")))?;
        let counts = Arc::new(Counts::default());
        let acceptor = tokio::spawn(accept(
            listener,
            upstream,
            Instant::now() + stall,
            client_limit,
            Arc::clone(&counts),
        ));
        Ok(Self {
            address,
            counts,
            acceptor,
        })
    }

    /// Where clients connect instead of the server.
    pub fn address(&self) -> SocketAddr {
        self.address
    }

    /// Connections accepted so far.
    pub fn connections(&self) -> usize {
        self.counts.connections.load(Ordering::Relaxed)
    }

    /// Connections turned away unanswered (held past the client's connect limit).
    pub fn held_past_limit(&self) -> usize {
        self.counts.held_past_limit.load(Ordering::Relaxed)
    }
}

impl Drop for SlowDoor {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

async fn accept(
    listener: TcpListener,
    upstream: SocketAddr,
    stalled_until: Instant,
    client_limit: Duration,
    counts: Arc<Counts>,
) {
    while let Ok((client, _)) = listener.accept().await {
        counts.connections.fetch_add(1, Ordering::Relaxed);
        if Instant::now() < stalled_until {
            counts.held_past_limit.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(turn_away(client, client_limit * 2));
        } else {
            let hold = (client_limit / 3).mul_f64(rand::random::<f64>());
            tokio::spawn(pass_through(client, upstream, hold));
        }
    }
}

/// Keeps `client` waiting for `hold` (past its connect limit), then closes it unanswered.
async fn turn_away(client: TcpStream, hold: Duration) {
    tokio::time::sleep(hold).await;
    drop(client);
}

/// Holds `client` for `hold`, then joins it to a fresh connection to `upstream` until either side closes.
async fn pass_through(mut client: TcpStream, upstream: SocketAddr, hold: Duration) {
    tokio::time::sleep(hold).await;
    let Ok(mut server) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}
