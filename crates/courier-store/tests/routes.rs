//! A route's delivery settings are part of its identity (issue 11, item 7), against a real PostgreSQL:
//! a worker that disagrees with the recorded settings is refused, naming each key; routes recorded before
//! settings were adopt the first worker's; changes are recorded only on purpose.

use std::sync::Arc;

use courier_store::{Migrator, RouteSettings, RouteSpec, SettingChange, Store, StoreError};
use courier_testkit::TestDb;

fn spec(name: &str) -> RouteSpec {
    RouteSpec {
        name: name.into(),
        topic: "orders".into(),
        destination: "hooks".into(),
    }
}

fn settings(url: &str, format: &str) -> RouteSettings {
    let mut settings = RouteSettings::default();
    settings
        .set("destination.url", url)
        .set("destination.format", format)
        .set("ordering", "none")
        .set("range_size", "100");
    settings
}

async fn recorded(store: &Store, name: &str) -> Option<RouteSettings> {
    store
        .routes()
        .await
        .expect("read routes")
        .into_iter()
        .find(|r| r.name == name)
        .unwrap_or_else(|| panic!("route {name} is recorded"))
        .settings
}

#[tokio::test]
async fn a_worker_with_other_settings_is_refused_naming_each_key_and_how_to_change_them() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let first = settings("http://a.example/in", "json");
    let registration = store
        .register_route(&spec("r"), &first, &[(0, 0)], false)
        .await
        .expect("first worker");
    assert!(
        registration.created && registration.recorded.is_empty(),
        "{registration:?}"
    );

    let again = store
        .register_route(&spec("r"), &first, &[(0, 0)], false)
        .await
        .expect("same settings start again");
    assert!(!again.created && again.recorded.is_empty(), "{again:?}");

    let err = store
        .register_route(
            &spec("r"),
            &settings("http://b.example/in", "ndjson"),
            &[(0, 0)],
            false,
        )
        .await
        .expect_err("other URL and format must be refused");
    let StoreError::RouteSettingsChanged { route, changes } = &err else {
        panic!("expected RouteSettingsChanged, got {err:?}");
    };
    assert_eq!(route, "r");
    assert_eq!(
        changes,
        &vec![
            SettingChange {
                key: "destination.format".into(),
                recorded: Some("json".into()),
                configured: "ndjson".into(),
            },
            SettingChange {
                key: "destination.url".into(),
                recorded: Some("http://a.example/in".into()),
                configured: "http://b.example/in".into(),
            },
        ]
    );
    assert!(
        !err.is_transient(),
        "a boot must not retry a settings conflict"
    );
    let message = err.to_string();
    for expected in [
        "destination.url: recorded \"http://a.example/in\", configured \"http://b.example/in\"",
        "courier routes update --config FILE r",
        "--accept-route-changes r",
        "docs/runbooks/route-settings-changed.md",
    ] {
        assert!(
            message.contains(expected),
            "missing {expected:?} in: {message}"
        );
    }
    assert_eq!(
        recorded(&store, "r").await,
        Some(first),
        "a refused worker records nothing"
    );
}

#[tokio::test]
async fn two_workers_starting_a_new_route_at_once_with_different_settings_one_is_refused() {
    let db = TestDb::migrated().await;
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let mut workers = Vec::new();
    for url in ["http://a.example/in", "http://b.example/in"] {
        let (store, barrier) = (db.store().await, barrier.clone());
        workers.push(tokio::spawn(async move {
            barrier.wait().await;
            store
                .register_route(&spec("r"), &settings(url, "json"), &[(0, 0)], false)
                .await
        }));
    }
    let mut started = 0;
    let mut refused = 0;
    for worker in workers {
        match worker.await.expect("task") {
            Ok(_) => started += 1,
            Err(StoreError::RouteSettingsChanged { .. }) => refused += 1,
            Err(other) => panic!("unexpected error: {other}"),
        }
    }
    assert_eq!((started, refused), (1, 1));
}

#[tokio::test]
async fn a_route_recorded_before_settings_adopts_the_first_workers_then_holds_them() {
    // A database at version 2 with a route, as left by the courier before settings were recorded.
    let db = TestDb::create().await;
    let all = Migrator::embedded();
    Migrator::new(all.migrations()[..2].to_vec())
        .run(&db.config())
        .await
        .expect("migrate to version 2");
    db.raw_client()
        .await
        .execute(
            "INSERT INTO courier_routes (name, topic, destination) VALUES ('r', 'orders', 'hooks')",
            &[],
        )
        .await
        .expect("old route");
    all.run(&db.config()).await.expect("migrate to current");
    let store = db.store().await;
    assert_eq!(recorded(&store, "r").await, None);

    let first = settings("http://a.example/in", "json");
    let registration = store
        .register_route(&spec("r"), &first, &[], false)
        .await
        .expect("first worker adopts");
    assert!(!registration.created);
    assert_eq!(
        registration.recorded.len(),
        4,
        "every key adopted: {registration:?}"
    );
    assert!(registration.recorded.iter().all(|c| c.recorded.is_none()));
    assert_eq!(recorded(&store, "r").await, Some(first));
    let err = store
        .register_route(
            &spec("r"),
            &settings("http://b.example/in", "json"),
            &[],
            false,
        )
        .await
        .expect_err("the second worker must agree with the first");
    assert!(
        matches!(err, StoreError::RouteSettingsChanged { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn a_new_key_is_adopted_and_a_key_only_the_store_knows_is_kept() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let old = settings("http://a.example/in", "json");
    store
        .register_route(&spec("r"), &old, &[], false)
        .await
        .expect("old worker");
    // A newer courier compares one more key: routes recorded before it adopt its value.
    let mut newer = old.clone();
    newer.set("poison", "skip");
    let registration = store
        .register_route(&spec("r"), &newer, &[], false)
        .await
        .expect("a new key is not a change");
    assert_eq!(
        registration.recorded,
        vec![SettingChange {
            key: "poison".into(),
            recorded: None,
            configured: "skip".into()
        }]
    );
    // An older worker, still running during the roll, does not know the key: it starts, the key stays.
    store
        .register_route(&spec("r"), &old, &[], false)
        .await
        .expect("older worker starts");
    assert_eq!(recorded(&store, "r").await, Some(newer));
}

#[tokio::test]
async fn a_deliberate_change_is_recorded_with_its_time_and_then_holds() {
    let db = TestDb::migrated().await;
    let store = db.store().await;
    let old = settings("http://a.example/in", "json");
    let new = settings("http://b.example/in", "json");
    assert_eq!(
        store
            .update_route_settings(&spec("r"), &new)
            .await
            .expect("update"),
        None,
        "a route no worker recorded is not created by an update"
    );
    store
        .register_route(&spec("r"), &old, &[], false)
        .await
        .expect("first worker");
    let client = db.raw_client().await;
    client
        .execute(
            "UPDATE courier_routes SET updated_at = now() - interval '1 day' WHERE name = 'r'",
            &[],
        )
        .await
        .expect("age the record");

    let changes = store
        .update_route_settings(&spec("r"), &new)
        .await
        .expect("update")
        .expect("route exists");
    assert_eq!(
        changes,
        vec![SettingChange {
            key: "destination.url".into(),
            recorded: Some("http://a.example/in".into()),
            configured: "http://b.example/in".into(),
        }]
    );
    let recent: bool = client
        .query_one(
            "SELECT updated_at > now() - interval '1 minute' FROM courier_routes WHERE name = 'r'",
            &[],
        )
        .await
        .expect("read")
        .get(0);
    assert!(recent, "updated_at must record the change");
    assert_eq!(recorded(&store, "r").await, Some(new.clone()));
    store
        .register_route(&spec("r"), &new, &[], false)
        .await
        .expect("a worker with the new settings starts");
    let err = store
        .register_route(&spec("r"), &old, &[], false)
        .await
        .expect_err("a worker still configured the old way is refused");
    assert!(
        matches!(err, StoreError::RouteSettingsChanged { .. }),
        "{err}"
    );

    // One worker accepting a change on the command line records it too.
    let accepted = store
        .register_route(&spec("r"), &old, &[], true)
        .await
        .expect("accepted");
    assert_eq!(accepted.recorded.len(), 1, "{accepted:?}");
    assert_eq!(recorded(&store, "r").await, Some(old));
}
