//! The migration runner against a real PostgreSQL: once-only under a boot storm, edited migrations
//! refused, a database behind refused in check mode.

use courier_store::migrate::Migration;
use courier_store::{Migrator, StoreError};
use courier_testkit::TestDb;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_runners_at_once_apply_each_migration_exactly_once() {
    let db = TestDb::create().await;
    let migrator = Migrator::embedded();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut runners = Vec::new();
    for _ in 0..50 {
        let (config, migrator, barrier) = (db.config(), migrator.clone(), barrier.clone());
        runners.push(tokio::spawn(async move {
            barrier.wait().await;
            migrator.run(&config).await
        }));
    }
    let mut applied = Vec::new();
    for runner in runners {
        let report = runner
            .await
            .expect("runner task")
            .expect("no runner may fail");
        assert_eq!(
            report.ddl_retries, 0,
            "a runner's DDL waited on a table lock: {report:?}"
        );
        applied.extend(report.applied);
    }
    applied.sort();
    // Versions need not be contiguous (numbers are reserved per change and may land out of order).
    let expected: Vec<i64> = migrator.migrations().iter().map(|m| m.version).collect();
    assert_eq!(
        applied, expected,
        "each migration must be applied by exactly one runner"
    );

    let client = db.raw_client().await;
    let rows: i64 = client
        .query_one("SELECT count(*) FROM courier_migrations", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(rows, migrator.migrations().len() as i64);
    let version = migrator.check(&db.config()).await.expect("schema current");
    assert_eq!(version.applied, version.expected);
}

#[tokio::test]
async fn a_second_run_on_a_current_schema_takes_no_lock_and_applies_nothing() {
    let db = TestDb::migrated().await;
    let report = Migrator::embedded()
        .run(&db.config())
        .await
        .expect("second run");
    assert!(
        report.already_current && report.applied.is_empty(),
        "{report:?}"
    );
}

#[tokio::test]
async fn an_edited_applied_migration_is_refused_naming_the_file() {
    let db = TestDb::migrated().await;
    let mut edited: Vec<Migration> = embedded_list();
    edited[0].sql.push_str("\n-- a harmless-looking edit\n");
    let migrator = Migrator::new(edited);

    let err = migrator
        .run(&db.config())
        .await
        .expect_err("edited migration must be refused");
    assert!(
        matches!(err, StoreError::MigrationEdited { version: 1, .. }),
        "{err:?}"
    );
    let message = err.to_string();
    assert!(
        message.contains("0001_initial.sql") && message.contains("edited"),
        "{message}"
    );

    let err = migrator
        .check(&db.config())
        .await
        .expect_err("check mode refuses too");
    assert!(err.to_string().contains("0001_initial.sql"), "{err}");
}

#[tokio::test]
async fn a_database_behind_is_refused_in_check_mode_naming_courier_migrate() {
    let db = TestDb::migrated().await;
    let mut newer = embedded_list();
    newer.push(Migration {
        version: 9999,
        name: "9999_add_note.sql".into(),
        sql: "ALTER TABLE courier_routes ADD COLUMN note text".into(),
    });
    let migrator = Migrator::new(newer);
    let err = migrator
        .check(&db.config())
        .await
        .expect_err("behind must be refused");
    assert!(
        matches!(err, StoreError::SchemaBehind { expected: 9999, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("courier migrate"), "{err}");

    // And `courier migrate` is indeed the fix.
    let report = migrator.run(&db.config()).await.expect("migrate");
    assert_eq!(report.applied, vec![9999]);
    migrator
        .check(&db.config())
        .await
        .expect("current after migrate");
}

#[tokio::test]
async fn an_empty_database_is_refused_naming_courier_migrate() {
    let db = TestDb::create().await;
    let err = Migrator::embedded()
        .check(&db.config())
        .await
        .expect_err("no schema");
    assert!(matches!(err, StoreError::SchemaMissing { .. }), "{err:?}");
    assert!(err.to_string().contains("courier migrate"), "{err}");
}

#[tokio::test]
async fn a_database_ahead_of_this_binary_is_refused() {
    let db = TestDb::migrated().await;
    let client = db.raw_client().await;
    client
        .execute("INSERT INTO courier_migrations (version, name, checksum) VALUES (9998, '9998_future.sql', 'x')", &[])
        .await
        .expect("insert");
    let err = Migrator::embedded()
        .check(&db.config())
        .await
        .expect_err("ahead");
    assert!(
        matches!(err, StoreError::SchemaAhead { applied: 9998, .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_failing_migration_is_rolled_back_with_its_bookkeeping_row() {
    let db = TestDb::migrated().await;
    let mut broken = embedded_list();
    broken.push(Migration {
        version: 9997,
        name: "9997_broken.sql".into(),
        sql: "CREATE TABLE courier_half_done (id int); SELECT no_such_function();".into(),
    });
    let err = Migrator::new(broken)
        .run(&db.config())
        .await
        .expect_err("broken migration");
    assert!(err.to_string().contains("9997_broken.sql"), "{err}");
    let client = db.raw_client().await;
    let half_done: bool = client
        .query_one("SELECT to_regclass('courier_half_done') IS NOT NULL", &[])
        .await
        .expect("q")
        .get(0);
    let recorded: i64 = client
        .query_one(
            "SELECT count(*) FROM courier_migrations WHERE version = 9997",
            &[],
        )
        .await
        .expect("q")
        .get(0);
    assert!(
        !half_done && recorded == 0,
        "a failed migration must leave nothing behind"
    );
}

fn embedded_list() -> Vec<Migration> {
    Migrator::embedded().migrations().to_vec()
}

#[tokio::test]
async fn a_failing_migration_reports_the_servers_message_detail_hint_and_sqlstate() {
    let db = TestDb::migrated().await;
    let mut migrations = embedded_list();
    migrations.push(Migration {
        version: 9996,
        name: "9996_refused.sql".into(),
        sql: "DO $$ BEGIN RAISE EXCEPTION 'the server says no' USING DETAIL = 'the detail part', \
              HINT = 'the hint part', ERRCODE = '22023'; END $$;"
            .into(),
    });
    let err = Migrator::new(migrations)
        .run(&db.config())
        .await
        .expect_err("a failing migration must fail");
    let message = err.to_string();
    for expected in [
        "9996_refused.sql",
        "rolled back",
        "the server says no",
        "22023",
        "detail: the detail part",
        "hint: the hint part",
    ] {
        assert!(
            message.contains(expected),
            "missing {expected:?} in: {message}"
        );
    }
}
