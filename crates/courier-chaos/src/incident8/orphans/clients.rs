//! The herd of impatient clients of incident 8's orphan scenario: each claims a pending range with a
//! lease-like statement (recorded in `chaos_claims` by the same statement), gives up at its deadline by
//! closing its socket, and retries on a new connection; and the count of the orphans they leave behind
//! (backends still queued on the lock whose client is gone).
//!
//! Owns: the clients' deadlines and claim, what they did ([`Clients`]), and [`sample`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering as AtomicOrdering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use courier_store::{DedicatedConnection, Store, Timeouts};
use courier_testkit::db::db_error;
use tokio::sync::watch;
use tokio_postgres::types::{ToSql, Type};

use super::sql_error;
use crate::env::RawSession;
use crate::pipeline::ROUTE;
use crate::ChaosError;

/// `application_name` of the claiming clients.
pub(super) const CLIENT_APP: &str = "courier-chaos-client";
/// Concurrent clients.
pub(super) const CLIENTS: usize = 4;
/// A client's deadline for one claim.
pub(super) const DEADLINE: Duration = Duration::from_millis(500);
/// The deadline of every third attempt: the caller was cancelled (shutdown, a parent's timeout).
pub(super) const CANCELLED: Duration = Duration::from_millis(150);
/// A lease-like claim of one pending range, recorded in `chaos_claims` by the same statement.
const CLAIM_SQL: &str = "WITH picked AS (
        SELECT id FROM courier_ranges WHERE route = $2 AND state = 'pending'
        ORDER BY id LIMIT 1 FOR UPDATE SKIP LOCKED),
    claimed AS (
        UPDATE courier_ranges r SET state = 'leased', epoch = r.epoch + 1, lease_owner = $1,
            lease_expires_at = now() + interval '2 seconds', attempts = r.attempts + 1, updated_at = now()
        FROM picked WHERE r.id = picked.id
        RETURNING r.id, r.epoch)
    INSERT INTO chaos_claims (owner, range_id, epoch) SELECT $1, id, epoch FROM claimed
    RETURNING range_id, epoch";

/// The limits courier derives from a 500 ms client deadline.
pub(super) fn client_timeouts() -> Timeouts {
    Timeouts {
        client_deadline: DEADLINE,
        statement_timeout: Duration::from_millis(450),
        lock_timeout: Duration::from_millis(300),
        ddl_lock_timeout: Duration::from_millis(300),
        idle_in_transaction_session_timeout: Duration::from_secs(3),
        client_connection_check_interval: Duration::from_millis(250),
        pool_wait: Duration::from_millis(400),
        ..Timeouts::default()
    }
}

/// What the clients did.
#[derive(Default)]
pub(super) struct Clients {
    /// `(owner, backend pid, when the client gave up)` of every abandoned attempt.
    pub abandoned: Mutex<Vec<(String, i32, Instant)>>,
    pub attempts: AtomicUsize,
    pub server_gave_up: AtomicUsize,
    pub received: AtomicUsize,
    pub other_errors: Mutex<Vec<String>>,
    /// Set by the sampler when naive orphans reach [`ORPHAN_CAP`](super::ORPHAN_CAP).
    pub capped: AtomicBool,
}

impl Clients {
    pub fn abandoned(&self) -> Vec<(String, i32, Instant)> {
        self.abandoned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

enum Conn {
    Raw(RawSession),
    Courier(DedicatedConnection),
}

impl Conn {
    fn client(&self) -> &tokio_postgres::Client {
        match self {
            Self::Raw(session) => session,
            Self::Courier(connection) => connection,
        }
    }
}

/// Counts orphans now: backends waiting on a lock whose client already gave up. Records when each
/// abandoned backend was first seen gone.
pub(super) async fn sample(
    monitor: &RawSession,
    clients: &Clients,
    gone_at: &mut HashMap<i32, Instant>,
) -> Result<usize, ChaosError> {
    let abandoned = clients.abandoned();
    let waiting: HashSet<i32> = monitor
        .query(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()
               AND application_name = $1 AND wait_event_type = 'Lock'",
            &[&CLIENT_APP],
        )
        .await
        .map_err(sql_error("sampling pg_stat_activity"))?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let now = Instant::now();
    let mut orphans = 0;
    for (_, pid, _) in &abandoned {
        if waiting.contains(pid) {
            orphans += 1;
        } else {
            gone_at.entry(*pid).or_insert(now);
        }
    }
    Ok(orphans)
}

/// One client: claim, give up at the deadline (closing the socket at once), retry on a new connection.
pub(super) async fn client_loop(
    k: usize,
    url: String,
    store: Option<Store>,
    clients: Arc<Clients>,
    mut stop: watch::Receiver<bool>,
) {
    for n in 1..=10_000usize {
        if *stop.borrow() {
            return;
        }
        if clients.capped.load(AtomicOrdering::Relaxed) {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                _ = stop.wait_for(|s| *s) => return,
            }
        }
        let connected = match &store {
            None => RawSession::connect(&url, CLIENT_APP)
                .await
                .map(Conn::Raw)
                .map_err(|e| db_error(&e)),
            Some(store) => store
                .dedicated_connection()
                .await
                .map(Conn::Courier)
                .map_err(|e| e.to_string()),
        };
        let conn = match connected {
            Ok(conn) => conn,
            Err(error) => {
                remember(&clients, format!("client {k} could not connect: {error}"));
                // Pacing a client whose server is refusing it (not synchronisation).
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let pid: i32 = match conn
            .client()
            .query_one("SELECT pg_backend_pid()", &[])
            .await
        {
            Ok(row) => row.get(0),
            Err(error) => {
                remember(&clients, format!("client {k}: {}", db_error(&error)));
                continue;
            }
        };
        let owner = format!("client{k}-attempt{n}");
        let deadline = if n % 3 == 0 { CANCELLED } else { DEADLINE };
        clients.attempts.fetch_add(1, AtomicOrdering::Relaxed);
        // Parse, bind and execute in one message, as a client that has sent its statement: the wait
        // for the lock is in execution, so a backend granted the lock later runs the claim to commit.
        let params: [(&(dyn ToSql + Sync), Type); 2] = [(&owner, Type::TEXT), (&ROUTE, Type::TEXT)];
        let claim = conn.client().query_typed(CLAIM_SQL, &params);
        match tokio::time::timeout(deadline, claim).await {
            Ok(Ok(rows)) => {
                clients
                    .received
                    .fetch_add(rows.len(), AtomicOrdering::Relaxed);
            }
            Ok(Err(error)) => match error.code().map(|c| c.code()) {
                Some("55P03" | "57014") => {
                    clients.server_gave_up.fetch_add(1, AtomicOrdering::Relaxed);
                }
                _ => remember(&clients, format!("client {k}: {}", db_error(&error))),
            },
            Err(_) => {
                // Gave up: the socket closes now (the connection task is aborted), the backend stays.
                drop(conn);
                clients
                    .abandoned
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push((owner, pid, Instant::now()));
            }
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(50)) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

fn remember(clients: &Clients, error: String) {
    let mut errors = clients
        .other_errors
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    if errors.len() < 10 {
        errors.push(error);
    }
}
