//! Client-aligned timeouts, proven against a real PostgreSQL: the server gives up before the client,
//! abandoned sessions lose their locks within the configured bound, and no connection is handed out
//! inside a transaction.

use std::time::{Duration, Instant};

use courier_core::{Ordering, RangeKind};
use courier_store::{LeaseRequest, PlanRequest, RouteSpec, Store, StoreConfig, StoreError};
use courier_testkit::db::fast_timeouts;
use courier_testkit::TestDb;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// Polls `probe` until it returns true; panics after `bound`. Used to wait for the server to act.
async fn wait_for<F, Fut>(what: &str, bound: Duration, mut probe: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let started = Instant::now();
    while !probe().await {
        assert!(started.elapsed() < bound, "{what}: not within {bound:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn store_with_ranges(db: &TestDb, config: &StoreConfig) -> Store {
    let store = Store::connect(config).await.expect("connect");
    let route = RouteSpec {
        name: "r".into(),
        topic: "t".into(),
        destination: "d".into(),
    };
    store.ensure_route(&route, &[]).await.expect("route");
    store
        .ensure_partitions("r", &[(0, 0)])
        .await
        .expect("partitions");
    store
        .plan(&PlanRequest {
            route: "r".into(),
            partition: 0,
            high_watermark: 1000,
            range_size: 100,
            max_new_ranges: 100,
            max_tail_age: Duration::ZERO,
        })
        .await
        .expect("plan");
    let _ = db;
    store
}

fn lease_all(owner: &str) -> LeaseRequest {
    LeaseRequest::one_route(
        "r",
        Ordering::None,
        owner,
        100,
        Duration::from_secs(30),
        RangeKind::Live,
    )
}

async fn backend_alive(store: &Store, pid: i32) -> bool {
    store
        .run("probe", move |c| {
            Box::pin(async move {
                let row = c
                    .query_one(
                        "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                        &[&pid],
                    )
                    .await
                    .map_err(|e| StoreError::from_db("probe", e))?;
                Ok(row.get::<_, i64>(0) == 1)
            })
        })
        .await
        .expect("probe")
}

#[tokio::test]
async fn every_pooled_connection_carries_the_server_side_limits_as_client_settings() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let settings = store
        .run("read settings", |c| {
            Box::pin(async move {
                let rows = c
                    .query(
                        "SELECT name, setting, source FROM pg_settings WHERE name = ANY($1) ORDER BY name",
                        &[&vec![
                            "statement_timeout",
                            "lock_timeout",
                            "idle_in_transaction_session_timeout",
                            "client_connection_check_interval",
                            "tcp_keepalives_idle",
                            "tcp_user_timeout",
                            "idle_session_timeout",
                        ]],
                    )
                    .await
                    .map_err(|e| StoreError::from_db("settings", e))?;
                Ok(rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1), r.get::<_, String>(2))).collect::<Vec<_>>())
            })
        })
        .await
        .expect("settings");
    assert_eq!(settings.len(), 7, "{settings:?}");
    for (name, _, source) in &settings {
        assert_eq!(
            source, "client",
            "{name} must be set by courier's connection options"
        );
    }
    let value = |name: &str| {
        settings
            .iter()
            .find(|s| s.0 == name)
            .map(|s| s.1.clone())
            .unwrap_or_default()
    };
    assert_eq!(value("statement_timeout"), "4500");
    assert_eq!(value("lock_timeout"), "3000");
    assert_eq!(value("idle_in_transaction_session_timeout"), "10000");
    assert_eq!(value("client_connection_check_interval"), "1000");
}

#[tokio::test]
async fn a_frozen_session_holding_range_locks_is_ended_by_the_server_and_the_ranges_move_again() {
    let db = TestDb::migrated().await;
    let config = db.config_with(fast_timeouts());
    let store = store_with_ranges(&db, &config).await;

    // A courier session that locks every range row and then freezes (never sends another byte).
    let frozen = store.dedicated_connection().await.expect("dedicated");
    frozen
        .batch_execute("BEGIN; SELECT * FROM courier_ranges FOR UPDATE")
        .await
        .expect("lock rows");
    let pid: i32 = frozen
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    assert!(
        store
            .lease(&lease_all("w1"))
            .await
            .expect("lease while locked")
            .is_empty(),
        "rows are locked"
    );

    let bound = config.timeouts.idle_in_transaction_session_timeout + Duration::from_secs(5);
    assert!(
        backend_alive(&store, pid).await,
        "the frozen session holds its locks until the server acts"
    );
    wait_for("frozen backend gone", bound, || async {
        !backend_alive(&store, pid).await
    })
    .await;

    let leased = store
        .lease(&lease_all("w1"))
        .await
        .expect("lease after release");
    assert_eq!(
        leased.len(),
        10,
        "every range is leasable once the server freed the locks"
    );
    let err = frozen
        .simple_query("SELECT 1")
        .await
        .expect_err("the frozen session was ended");
    assert!(err.is_closed() || err.code().is_some(), "{err}");
}

/// A TCP relay that can stop forwarding without closing either socket: to PostgreSQL, the client has
/// vanished from the network (no FIN, no RST), as when a container's host dies.
async fn vanishing_relay(server: (String, u16)) -> (u16, watch::Sender<bool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind relay");
    let port = listener.local_addr().expect("addr").port();
    let (vanish, vanished) = watch::channel(false);
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let upstream = TcpStream::connect((server.0.as_str(), server.1))
                .await
                .expect("connect upstream");
            let vanished = vanished.clone();
            tokio::spawn(relay(client, upstream, vanished));
        }
    });
    (port, vanish)
}

async fn relay(client: TcpStream, upstream: TcpStream, mut vanished: watch::Receiver<bool>) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut upstream_read, mut upstream_write) = upstream.into_split();
    let mut a = [0u8; 16 * 1024];
    let mut b = [0u8; 16 * 1024];
    loop {
        tokio::select! {
            _ = vanished.changed() => break,
            n = client_read.read(&mut a) => match n { Ok(0) | Err(_) => return, Ok(n) => { if upstream_write.write_all(&a[..n]).await.is_err() { return } } },
            n = upstream_read.read(&mut b) => match n { Ok(0) | Err(_) => return, Ok(n) => { if client_write.write_all(&b[..n]).await.is_err() { return } } },
        }
    }
    // Vanished: hold both sockets open and silent until the server gives up on its side.
    let mut sink = [0u8; 1024];
    while let Ok(n) = upstream_read.read(&mut sink).await {
        if n == 0 {
            break;
        }
    }
    drop((client_read, client_write, upstream_write));
}

#[tokio::test]
async fn a_client_that_vanishes_from_the_network_inside_a_transaction_loses_its_locks_within_the_bound(
) {
    let db = TestDb::migrated().await;
    let direct = db.config_with(fast_timeouts());
    let store = store_with_ranges(&db, &direct).await;

    let pg: tokio_postgres::Config = db.url.parse().expect("url");
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
        _ => "127.0.0.1".into(),
    };
    let (relay_port, vanish) =
        vanishing_relay((host, pg.get_ports().first().copied().unwrap_or(5432))).await;
    let mut relayed = direct.clone();
    relayed.url = format!(
        "postgres://{}:{}@127.0.0.1:{relay_port}/{}",
        pg.get_user().unwrap_or("courier"),
        String::from_utf8_lossy(pg.get_password().unwrap_or_default()),
        pg.get_dbname().unwrap_or_default()
    );
    let victim = Store::connect(&relayed)
        .await
        .expect("connect through relay");
    let victim_client = victim
        .dedicated_connection()
        .await
        .expect("dedicated through relay");
    victim_client
        .batch_execute("BEGIN; SELECT * FROM courier_ranges FOR UPDATE")
        .await
        .expect("lock");
    let pid: i32 = victim_client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    vanish.send(true).expect("vanish");

    let bound = direct.timeouts.idle_in_transaction_session_timeout + Duration::from_secs(5);
    wait_for("vanished client's backend ended", bound, || async {
        !backend_alive(&store, pid).await
    })
    .await;
    assert_eq!(
        store.lease(&lease_all("w2")).await.expect("lease").len(),
        10
    );
}

#[tokio::test]
async fn a_lease_blocked_by_a_table_lock_fails_with_lock_timeout_not_at_the_client_deadline() {
    let db = TestDb::migrated().await;
    let config = db.config_with(fast_timeouts());
    let store = store_with_ranges(&db, &config).await;

    // What a queued `ALTER TABLE ... ADD COLUMN IF NOT EXISTS` does to every lease and checkpoint.
    let holder = db.raw_client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE courier_ranges IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock table");

    let err = store
        .lease(&lease_all("w1"))
        .await
        .expect_err("lease must not wait forever");
    assert!(
        matches!(err, StoreError::LockTimeout { operation: "lease" }),
        "expected LockTimeout, got {err:?}"
    );
    assert!(err.is_transient());
    let message = err.to_string();
    assert!(
        message.contains("lock_timeout") && message.contains("docs/runbooks/lock-timeout.md"),
        "{message}"
    );

    holder.batch_execute("ROLLBACK").await.expect("release");
    assert_eq!(
        store
            .lease(&lease_all("w1"))
            .await
            .expect("lease after release")
            .len(),
        10
    );
}

#[tokio::test]
async fn a_lock_waiting_backend_whose_client_left_is_ended_by_the_connection_check() {
    let db = TestDb::migrated().await;
    let config = db.config_with(fast_timeouts());
    let store = store_with_ranges(&db, &config).await;
    let holder = db.raw_client().await;
    holder
        .batch_execute("BEGIN; LOCK TABLE courier_ranges IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock table");

    // A courier session that waits on the lock with no lock or statement limit of its own, then its
    // client gives up and leaves: without client_connection_check_interval the backend would stay
    // queued (an orphan) and could later commit work nobody receives.
    let waiter = store.dedicated_connection().await.expect("dedicated");
    waiter
        .batch_execute("SET lock_timeout = 0; SET statement_timeout = 0")
        .await
        .expect("unlimited");
    let pid: i32 = waiter
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let queued = tokio::spawn(async move {
        waiter
            .execute("UPDATE courier_ranges SET attempts = attempts", &[])
            .await
    });
    let monitor = db.raw_client().await;
    wait_for("waiter queued on the lock", Duration::from_secs(10), || async {
        monitor
            .query_one("SELECT count(*) FROM pg_stat_activity WHERE pid = $1 AND wait_event_type = 'Lock'", &[&pid])
            .await
            .map(|r| r.get::<_, i64>(0) == 1)
            .unwrap_or(false)
    })
    .await;
    // The client gives up: its task, and with it the connection, is dropped.
    queued.abort();

    let bound = config.timeouts.client_connection_check_interval + Duration::from_secs(5);
    wait_for(
        "orphaned backend ended while the lock is still held",
        bound,
        || async { !backend_alive(&store, pid).await },
    )
    .await;
    holder
        .batch_execute("ROLLBACK")
        .await
        .expect("holder still fine");
}

#[tokio::test]
async fn no_connection_is_handed_out_inside_a_transaction_broken_or_abandoned() {
    let db = TestDb::migrated().await;
    let mut config = db.config_with(fast_timeouts());
    config.pool_size = 1;
    let store = Store::connect(&config).await.expect("connect");

    // A caller that leaves a broken transaction behind on its connection.
    let err = store
        .run("leave a broken transaction", |c| {
            Box::pin(async move {
                c.batch_execute("BEGIN; SELECT 1/0")
                    .await
                    .map_err(|e| StoreError::from_db("broken", e))?;
                Ok(())
            })
        })
        .await
        .expect_err("division by zero");
    assert!(err.to_string().contains("division by zero"), "{err}");
    assert!(
        outside_any_transaction(&store).await,
        "pool handed out a connection inside the broken transaction"
    );

    // A caller that opens a transaction and then outlives the client deadline.
    let err = store
        .run("abandon a transaction", |c| {
            Box::pin(async move {
                c.batch_execute("BEGIN; SELECT * FROM courier_ranges FOR UPDATE")
                    .await
                    .map_err(|e| StoreError::from_db("abandon", e))?;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok(())
            })
        })
        .await
        .expect_err("client deadline");
    assert!(matches!(err, StoreError::Deadline { .. }), "{err:?}");
    assert!(
        outside_any_transaction(&store).await,
        "pool handed out the abandoned connection"
    );
    // The abandoned connection was closed, so its locks are gone at once: leases are not blocked.
    store
        .ensure_route(
            &RouteSpec {
                name: "r".into(),
                topic: "t".into(),
                destination: "d".into(),
            },
            &[],
        )
        .await
        .expect("route");
}

async fn outside_any_transaction(store: &Store) -> bool {
    store
        .run("probe transaction state", |c| {
            Box::pin(async move {
                // Inside a transaction now() is the transaction's start and differs from the statement's.
                // One simple-protocol message, so outside a transaction both are the same instant.
                let messages = c
                    .simple_query("SELECT now() = statement_timestamp()")
                    .await
                    .map_err(|e| StoreError::from_db("probe", e))?;
                Ok(messages.iter().any(|m| match m {
                    tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0) == Some("t"),
                    _ => false,
                }))
            })
        })
        .await
        .expect("probe must succeed on a clean connection")
}

#[tokio::test]
async fn bad_connection_settings_end_with_one_clear_error_naming_the_fix() {
    let db = TestDb::create().await;
    let pg: tokio_postgres::Config = db.url.parse().expect("url");
    let port = pg.get_ports().first().copied().unwrap_or(5432);

    // Nothing listens on port 1.
    let err = Store::connect(&StoreConfig::new(
        "postgres://courier:courier@127.0.0.1:1/courier",
    ))
    .await
    .expect_err("unreachable");
    assert!(matches!(err, StoreError::Unreachable { .. }), "{err:?}");
    assert!(err.to_string().contains("make postgres"), "{err}");

    let wrong_password = format!("postgres://courier:wrong@127.0.0.1:{port}/{}", db.name);
    let err = Store::connect(&StoreConfig::new(wrong_password))
        .await
        .expect_err("bad password");
    assert!(matches!(err, StoreError::Authentication { .. }), "{err:?}");
    assert!(err.to_string().contains("password"), "{err}");
    assert!(
        !err.to_string().contains("wrong"),
        "the password must never be printed: {err}"
    );

    let err = Store::connect(&StoreConfig::new("mysql://nope"))
        .await
        .expect_err("bad url");
    assert!(
        matches!(err, StoreError::Config(_)) && err.to_string().contains("store.url"),
        "{err}"
    );

    let mut config = db.config();
    config.timeouts.statement_timeout = config.timeouts.client_deadline;
    let err = Store::connect(&config)
        .await
        .expect_err("server limit not below client deadline");
    assert!(
        err.to_string().contains("statement_timeout")
            && err.to_string().contains("client_deadline"),
        "{err}"
    );
}
