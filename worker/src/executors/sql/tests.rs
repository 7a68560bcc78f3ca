//! Tests of the `sql` executor against the real PostgreSQL at `RPAFLOW_TEST_PG` (by default
//! `postgresql://postgres@127.0.0.1:5432/test`). When it does not answer, the tests run
//! `scripts/setup-postgres.sh` to start it, and fail if it still does not.

use std::sync::atomic::{AtomicUsize, Ordering};

use serde_json::json;
use tokio::sync::OnceCell;

use super::*;

const DEFAULT_DSN: &str = "postgresql://postgres@127.0.0.1:5432/test";

async fn reachable(dsn: &str) -> bool {
    match tokio_postgres::connect(dsn, NoTls).await {
        Ok((client, connection)) => {
            tokio::spawn(connection);
            client.simple_query("SELECT 1").await.is_ok()
        }
        Err(_) => false,
    }
}

/// The test database's DSN, starting PostgreSQL first when it does not answer.
async fn dsn() -> String {
    static READY: OnceCell<String> = OnceCell::const_new();
    READY
        .get_or_init(|| async {
            let dsn = std::env::var("RPAFLOW_TEST_PG").unwrap_or_else(|_| DEFAULT_DSN.to_owned());
            if reachable(&dsn).await {
                return dsn;
            }
            let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../scripts/setup-postgres.sh");
            let status = tokio::process::Command::new("bash")
                .arg(&script)
                .stdout(std::process::Stdio::null())
                .status()
                .await;
            assert!(
                reachable(&dsn).await,
                "PostgreSQL does not answer at {dsn} (set RPAFLOW_TEST_PG), even after running \
                 {} ({status:?})",
                script.display()
            );
            dsn
        })
        .await
        .clone()
}

/// A table name no other test uses.
fn table(purpose: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "rpaflow_sql_{purpose}_{}_{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

async fn run(executor: &SqlExecutor, input: Json) -> Result<Json, StepError> {
    executor
        .execute(&TaskContext::new("run-1", "store"), input)
        .await
}

async fn sql(executor: &SqlExecutor, dsn: &str, statement: &str) -> Json {
    run(executor, json!({"dsn": dsn, "execute": statement}))
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"))
}

async fn count(executor: &SqlExecutor, dsn: &str, table: &str) -> i64 {
    let out = run(
        executor,
        json!({"dsn": dsn, "query": format!("SELECT count(*) AS n FROM {table}")}),
    )
    .await
    .unwrap();
    out["rows"][0]["n"].as_i64().unwrap()
}

#[tokio::test]
async fn bulk_insert_then_query_returns_typed_rows() {
    let dsn = dsn().await;
    let executor = SqlExecutor::new(Egress::permissive());
    let t = table("types");
    sql(
        &executor,
        &dsn,
        &format!(
            "CREATE TABLE {t} (id int8 PRIMARY KEY, name text, small int2, score float8, \
             active bool, price numeric(10, 2), tags jsonb, born date, seen timestamptz, \
             at timestamp, ref uuid)"
        ),
    )
    .await;
    let out = run(
        &executor,
        json!({"dsn": dsn, "insert": {"table": t, "rows": [
            {"id": 1, "name": "Ada", "small": 7, "score": 9.5, "active": true, "price": 12.5,
             "tags": {"vip": true, "langs": ["en", "fr"]}, "born": "1815-12-10",
             "seen": "2024-05-01T12:30:00+02:00", "at": "2024-05-01T12:30:00.25",
             "ref": "67e55044-10b1-426f-9247-bb680e5fe0c8"},
            {"id": 2, "name": "Grace", "price": "1234.567", "tags": [1, 2]},
        ]}}),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({"affected": 2}));

    let out = run(
        &executor,
        json!({"dsn": dsn, "query": format!("SELECT * FROM {t} WHERE id >= $1 ORDER BY id"), "params": [1]}),
    )
    .await
    .unwrap();
    assert_eq!(out["count"], 2);
    assert_eq!(
        out["rows"][0],
        json!({
            "id": 1, "name": "Ada", "small": 7, "score": 9.5, "active": true, "price": "12.50",
            "tags": {"vip": true, "langs": ["en", "fr"]}, "born": "1815-12-10",
            "seen": "2024-05-01T10:30:00Z", "at": "2024-05-01T12:30:00.250",
            "ref": "67e55044-10b1-426f-9247-bb680e5fe0c8",
        })
    );
    // Missing columns are NULL; the numeric is rounded by its column, not by JSON.
    assert_eq!(out["rows"][1]["price"], "1234.57");
    assert_eq!(out["rows"][1]["tags"], json!([1, 2]));
    assert_eq!(out["rows"][1]["active"], Json::Null);
    assert_eq!(out["rows"][1]["seen"], Json::Null);
    sql(&executor, &dsn, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn execute_returns_affected_rows() {
    let dsn = dsn().await;
    let executor = SqlExecutor::new(Egress::permissive());
    let t = table("execute");
    sql(
        &executor,
        &dsn,
        &format!("CREATE TABLE {t} (id int4, status text)"),
    )
    .await;
    let rows: Vec<Json> = (0..5)
        .map(|i| json!({"id": i, "status": if i < 3 { "new" } else { "done" }}))
        .collect();
    run(
        &executor,
        json!({"dsn": dsn, "insert": {"table": t, "rows": rows}}),
    )
    .await
    .unwrap();
    let out = run(
        &executor,
        json!({"dsn": dsn, "execute": format!("UPDATE {t} SET status = $1 WHERE status = $2"),
               "params": ["sent", "new"]}),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({"affected": 3}));
    sql(&executor, &dsn, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn injection_attempts_are_stored_as_data() {
    let dsn = dsn().await;
    let executor = SqlExecutor::new(Egress::permissive());
    let t = table("injection");
    sql(&executor, &dsn, &format!("CREATE TABLE {t} (note text)")).await;
    let attack = format!("x'); DROP TABLE {t}; --");
    run(
        &executor,
        json!({"dsn": dsn, "execute": format!("INSERT INTO {t} (note) VALUES ($1)"), "params": [attack]}),
    )
    .await
    .unwrap();
    run(
        &executor,
        json!({"dsn": dsn, "insert": {"table": t, "rows": [{"note": attack}]}}),
    )
    .await
    .unwrap();
    let out = run(
        &executor,
        json!({"dsn": dsn, "query": format!("SELECT note FROM {t} WHERE note = $1"), "params": [attack]}),
    )
    .await
    .unwrap();
    assert_eq!(
        out["count"], 2,
        "the table is still there, holding the text"
    );
    assert_eq!(out["rows"][0]["note"], attack);
    // Names cannot smuggle SQL either.
    let err = run(
        &executor,
        json!({"dsn": dsn, "insert": {"table": format!("{t}; DROP TABLE {t}"), "rows": [{"note": "x"}]}}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, "invalid_input");
    let err = run(
        &executor,
        json!({"dsn": dsn, "insert": {"table": t, "rows": [{"note\" text); --": "x"}]}}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, "invalid_input");
    assert_eq!(count(&executor, &dsn, &t).await, 2);
    sql(&executor, &dsn, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn syntax_errors_report_postgres_message() {
    let dsn = dsn().await;
    let err = run(
        &SqlExecutor::new(Egress::permissive()),
        json!({"dsn": dsn, "query": "SELEC 1"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, "sql_error");
    assert!(!err.retryable);
    assert!(
        err.message.contains("syntax error at or near \"SELEC\""),
        "{}",
        err.message
    );
    assert!(err.message.contains("SQLSTATE 42601"), "{}", err.message);
    assert!(err.message.contains("at character 1"), "{}", err.message);
}

#[tokio::test]
async fn serialization_failures_and_deadlocks_are_retryable() {
    let dsn = dsn().await;
    let executor = SqlExecutor::new(Egress::permissive());
    for (state, retryable) in [("40001", true), ("40P01", true), ("23505", false)] {
        let err = run(
            &executor,
            json!({"dsn": dsn, "execute": format!(
                "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '{state}', MESSAGE = 'conflict'; END $$"
            )}),
        )
        .await
        .unwrap_err();
        assert_eq!(err.code, "sql_error");
        assert_eq!(err.retryable, retryable, "{state}: {}", err.message);
        assert!(
            err.message
                .starts_with(&format!("conflict (SQLSTATE {state}")),
            "{}",
            err.message
        );
    }
}

#[tokio::test]
async fn cancelling_the_run_stops_the_statement() {
    let dsn = dsn().await;
    let executor = SqlExecutor::new(Egress::permissive());
    let ctx = TaskContext::new("run-1", "slow");
    let cancel = ctx.cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        cancel.cancel();
    });
    let started = std::time::Instant::now();
    let err = executor
        .execute(&ctx, json!({"dsn": dsn, "query": "SELECT pg_sleep(30)"}))
        .await
        .unwrap_err();
    assert_eq!(err.code, "cancelled");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The pool's connections are usable afterwards.
    let out = run(&executor, json!({"dsn": dsn, "query": "SELECT 1 AS one"}))
        .await
        .unwrap();
    assert_eq!(out["rows"][0]["one"], 1);
}

#[tokio::test]
async fn a_failing_statement_rolls_back_the_whole_step() {
    let dsn = dsn().await;
    let executor = SqlExecutor::new(Egress::permissive());
    let t = table("rollback");
    sql(
        &executor,
        &dsn,
        &format!("CREATE TABLE {t} (id int4 NOT NULL, name text)"),
    )
    .await;
    // 600 rows go in two batches; the second fails on its last row, after the first went in.
    let mut rows: Vec<Json> = (0..600).map(|i| json!({"id": i, "name": "ok"})).collect();
    rows[599] = json!({"id": null, "name": "bad"});
    let err = run(
        &executor,
        json!({"dsn": dsn, "insert": {"table": t, "rows": rows}}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, "sql_error");
    assert!(err.message.contains("23502"), "{}", err.message);
    assert_eq!(count(&executor, &dsn, &t).await, 0);
    sql(&executor, &dsn, &format!("DROP TABLE {t}")).await;
}

#[tokio::test]
async fn bad_params_name_their_index() {
    let dsn = dsn().await;
    let executor = SqlExecutor::new(Egress::permissive());
    let err = run(
        &executor,
        json!({"dsn": dsn, "query": "SELECT $1::int8 + $2::int8 AS n", "params": [1, "two"]}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, "invalid_input");
    assert_eq!(
        err.message,
        "`params[1]` cannot be bound as SQL type `int8`: got a string"
    );
    let err = run(
        &executor,
        json!({"dsn": dsn, "query": "SELECT $1::int8 AS n", "params": []}),
    )
    .await
    .unwrap_err();
    assert_eq!(
        err.message,
        "`params` has 0 values but the statement takes 1"
    );
    let out = run(
        &executor,
        json!({"dsn": dsn, "query": "SELECT $1::int8 + $2::int8 AS n", "params": [1, 2]}),
    )
    .await
    .unwrap();
    assert_eq!(out, json!({"count": 1, "rows": [{"n": 3}]}));
}

#[tokio::test]
async fn connection_failures_are_retryable_and_hide_the_password() {
    // A port that was just free: nothing listens there.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let err = run(
        &SqlExecutor::new(Egress::permissive()),
        json!({"dsn": format!("postgresql://app:s3cret-pw@127.0.0.1:{port}/crm"), "query": "SELECT 1"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, "sql_connect");
    assert!(err.retryable);
    assert_eq!(
        err.message,
        format!("cannot connect to app@127.0.0.1:{port}/crm")
    );
    assert!(
        err.message.contains(&format!("app@127.0.0.1:{port}/crm")),
        "{}",
        err.message
    );
    assert!(!err.message.contains("s3cret"), "{}", err.message);
}

#[test]
fn inputs_are_checked_before_connecting() {
    let message = |input: Json| {
        let fields = Input::new(&input).unwrap();
        parse_action(&fields).unwrap_err().message
    };
    assert_eq!(
        message(json!({})),
        "one of `query`, `execute` or `insert` is required"
    );
    assert_eq!(
        message(json!({"query": "SELECT 1", "execute": "SELECT 1"})),
        "only one of `query`, `execute` or `insert` may be given (got `query`, `execute`)"
    );
    assert!(message(json!({"insert": {"table": "a.b.c", "rows": []}})).contains("`insert.table`"));
    assert!(
        message(json!({"insert": {"table": "t", "rows": [{"a": 1}], "columns": ["1a"]}}))
            .contains("`insert.columns`")
    );
    assert_eq!(
        message(json!({"insert": {"table": "t", "rows": [{"a": 1}, 3]}})),
        "`insert.rows[1]` must be a mapping, not a number"
    );
    let input = json!({"insert": {"table": "crm.Orders", "rows": [{"a": 1, "b": 2}, {"a": 3}]}});
    let fields = Input::new(&input).unwrap();
    let Action::Insert(insert) = parse_action(&fields).unwrap() else {
        panic!("not an insert");
    };
    assert_eq!(
        insert.sql(2),
        "INSERT INTO \"crm\".\"Orders\" (\"a\", \"b\") VALUES ($1, $2), ($3, $4)"
    );
    let values = insert.values(insert.rows, 0).unwrap();
    assert_eq!(values[3], ("insert.rows[1].b".to_owned(), &Json::Null));
    let extra = json!([{"a": 1, "c": 2}]);
    let err = insert.values(extra.as_array().unwrap(), 5).unwrap_err();
    assert!(
        err.message.starts_with("`insert.rows[5]` has field `c`"),
        "{}",
        err.message
    );
}

#[tokio::test]
async fn unix_sockets_are_refused_unless_allowed() {
    let executor = SqlExecutor::new(Egress::default());
    for dsn in [
        "host=/var/run/postgresql user=app dbname=crm",
        "postgresql://app@%2Fvar%2Frun%2Fpostgresql/crm",
        "host=@abstract user=app",
        "postgresql:///crm?host=/tmp",
    ] {
        let err = run(&executor, json!({"dsn": dsn, "query": "SELECT 1"}))
            .await
            .unwrap_err();
        assert_eq!(err.code, "egress_denied", "{dsn}: {err}");
        assert!(!err.retryable);
        assert!(
            err.message.starts_with("egress to the unix socket ")
                && err.message.ends_with(
                    "is denied by the worker's egress policy (worker.egress.allow_unix_sockets)"
                ),
            "{}",
            err.message
        );
    }
    // Even `rpaflow dev`'s policy keeps them closed; only the switch opens them.
    let err = run(
        &SqlExecutor::new(Egress::permissive()),
        json!({"dsn": "host=/var/run/postgresql user=app", "query": "SELECT 1"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, "egress_denied");
    let policy = crate::egress::EgressPolicy::new(&crate::egress::EgressConfig {
        allow_unix_sockets: true,
        ..Default::default()
    })
    .unwrap();
    let err = run(
        &SqlExecutor::new(Egress::new(policy)),
        json!({"dsn": "host=/nonexistent/rpaflow user=app", "query": "SELECT 1"}),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code, "sql_connect", "{err}");
}

#[tokio::test]
async fn denied_databases_read_alike_whether_they_listen_or_not() {
    // One port that listens, one that does not.
    let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let open_port = open.local_addr().unwrap().port();
    let closed_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let executor = SqlExecutor::new(Egress::default());
    let mut messages = Vec::new();
    for port in [open_port, closed_port] {
        for dsn in [
            format!("postgresql://app:pw@127.0.0.1:{port}/crm"),
            format!("postgresql://app:pw@localhost:{port}/crm"),
            format!("host=db.example hostaddr=127.0.0.1 port={port} user=app"),
        ] {
            let err = run(&executor, json!({"dsn": dsn, "query": "SELECT 1"}))
                .await
                .unwrap_err();
            assert_eq!(err.code, "egress_denied", "{dsn}: {err}");
            assert!(!err.retryable);
            messages.push(err.message.replace(&port.to_string(), "PORT"));
        }
    }
    assert_eq!(messages[..3], messages[3..]);
    assert_eq!(
        messages[0],
        "egress to 127.0.0.1:PORT is denied by the worker's egress policy (worker.egress)"
    );
    assert_eq!(
        messages[1],
        "egress to localhost:PORT is denied by the worker's egress policy (worker.egress)"
    );
    drop(open);
}
