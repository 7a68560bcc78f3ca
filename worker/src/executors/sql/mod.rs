//! `sql`: runs a statement against PostgreSQL, inside one transaction per step.
//!
//! # Input
//! | field | meaning |
//! |---|---|
//! | `dsn` | required; a connection string such as `postgresql://app@127.0.0.1:5432/crm` |
//! | `query` | a statement whose rows are returned (`SELECT …`, `… RETURNING …`) |
//! | `execute` | a statement whose count of affected rows is returned |
//! | `params` | with `query` or `execute`: a list of values for `$1`, `$2`, … |
//! | `insert` | `{table, rows, columns?}`: inserts a list of mappings |
//!
//! A step has exactly one of `query`, `execute` and `insert`. Values are always bound as
//! parameters, never spliced into the SQL: the statement is prepared and each value converted to
//! the type PostgreSQL asks for (`bool`; `int2`/`int4`/`int8` from whole numbers; `float4`/`float8`
//! and `numeric` from numbers, `numeric` also from decimal strings; text types and enums from
//! strings; `json`/`jsonb` from anything; `uuid`, `date`, `timestamp` and `timestamptz` (RFC 3339)
//! from strings; `null` for any type). Cast a parameter in the SQL (`$1::text`) to bind another type.
//!
//! `insert` names a `table` (optionally `schema.table`) and takes its `columns` from the list or
//! else from the first row's fields; names must be plain identifiers (letters, digits, `_`,
//! `$`, not starting with a digit) and are quoted, so they are case-sensitive. A row without one of
//! the columns inserts `NULL` there; a field outside the columns is an error. Rows go in batches of
//! multi-row `INSERT`s, all in the step's transaction.
//!
//! Connections come from a pool per DSN (up to 8 connections each), made when a DSN is first used.
//! Connections are plain TCP (or Unix sockets): TLS is not supported yet, so use a local or
//! otherwise trusted network.
//!
//! The egress policy of the step's namespace (`worker.egress`, or its own
//! `worker.egress_namespaces.<namespace>`; see [`crate::egress`]) applies: every step
//! resolves the DSN's hosts itself, checks the addresses, and connects to the first checked
//! address of each host (given to the driver as `hostaddr`, so the host name stays the server's
//! name); a `hostaddr` in the DSN is checked as it is. Unix sockets (`host=/var/run/postgresql`,
//! `@abstract`) are refused unless the policy's `allow_unix_sockets` is set. Pools are the
//! executor's, so a namespace with a policy of its own has pools of its own.
//!
//! # Output
//! - `query`: `{rows: [{column: value}], count}`. Columns read as JSON: `bool`; integers; floats
//!   (NaN and infinities as strings); `numeric` as an exact decimal string; text types and enums;
//!   `json`/`jsonb` as JSON; `uuid`; `timestamptz` as RFC 3339 in UTC, `timestamp` as RFC 3339
//!   without an offset, `date` as `YYYY-MM-DD`; `bytea` as hex; `NULL` as `null`. Other types are
//!   an `invalid_input` error that suggests a cast.
//! - `execute` and `insert`: `{affected}`.
//!
//! # Errors
//! - `egress_denied`: the egress policy denies a host of the DSN, or it is a Unix socket.
//! - `sql_connect` (retryable): no connection could be made (`cannot connect to
//!   user@host:port/dbname`, however it failed) or it broke.
//! - `sql_error`: PostgreSQL refused a statement; the message holds its text, SQLSTATE, position,
//!   detail and hint. Retryable only for serialization failures and deadlocks (40001, 40P01).
//!   Nothing of the step is kept: its transaction is rolled back.
//! - `cancelled`: the run was cancelled; the running statement is cancelled on the server too.
//! - `invalid_input`: a bad field, named in the message (`params[1]`, `insert.rows[3]`).
//!
//! Messages name the database as `user@host:port/dbname`, never with the password.

mod input;
mod types;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use serde_json::{Value as Json, json};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use self::input::{Action, parse_action};
use self::types::{Param, row_to_json};
use crate::egress::Egress;
use crate::executors::Input;
use crate::{Executor, StepError, TaskContext};

/// The error codes of the `sql` executor.
pub mod codes {
    /// No connection to the database could be made, or it broke (retryable).
    pub const SQL_CONNECT: &str = "sql_connect";
    /// PostgreSQL refused a statement.
    pub const SQL_ERROR: &str = "sql_error";
}

const FIELDS: [&str; 5] = ["dsn", "query", "execute", "params", "insert"];
/// Connections per DSN.
const POOL_SIZE: usize = 8;
/// How long to wait for a new connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// PostgreSQL binds at most 65535 parameters per statement; batches stay well under.
const MAX_BATCH_PARAMS: usize = 16_384;
const MAX_BATCH_ROWS: usize = 500;
/// SQLSTATEs worth another attempt: serialization failure and deadlock.
const RETRYABLE_STATES: [&str; 2] = ["40001", "40P01"];

/// The `sql` executor: a connection pool per DSN and checked addresses, made on first use.
pub struct SqlExecutor {
    pools: Mutex<HashMap<String, Pool>>,
    egress: Egress,
}

impl std::fmt::Debug for SqlExecutor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The keys are DSNs, which may hold passwords.
        let pools = self.pools.lock().map_or(0, |p| p.len());
        f.debug_struct("SqlExecutor")
            .field("pools", &pools)
            .finish()
    }
}

/// A database as messages name it, and the password to keep out of them.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    password: Option<String>,
}

impl Target {
    fn new(config: &tokio_postgres::Config) -> Self {
        let host = match config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => "localhost".to_owned(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .filter(|p| !p.is_empty());
        Self {
            name: format!(
                "{}@{host}:{port}/{}",
                config.get_user().unwrap_or_default(),
                config.get_dbname().unwrap_or_default()
            ),
            password,
        }
    }

    /// `message` with the password, should it appear, replaced.
    fn redact(&self, message: String) -> String {
        match &self.password {
            Some(password) => message.replace(password.as_str(), "***"),
            None => message,
        }
    }
}

impl SqlExecutor {
    /// An executor with no pools yet, reaching databases under `egress`.
    pub fn new(egress: Egress) -> Self {
        Self {
            pools: Mutex::default(),
            egress,
        }
    }

    /// `config` with a checked address (`hostaddr`) for each of its hosts; `egress_denied` for a
    /// host the policy denies or a Unix socket it does not allow.
    async fn checked(
        &self,
        mut config: tokio_postgres::Config,
    ) -> Result<tokio_postgres::Config, StepError> {
        use tokio_postgres::config::Host;
        let policy = self.egress.policy();
        let hosts = config.get_hosts().to_vec();
        let ports = config.get_ports().to_vec();
        let port_of = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
        for host in &hosts {
            let socket = match host {
                Host::Unix(path) => Some(path.display().to_string()),
                Host::Tcp(name) if name.starts_with('/') || name.starts_with('@') => {
                    Some(name.clone())
                }
                Host::Tcp(_) => None,
            };
            if let Some(socket) = socket
                && !policy.allows_unix_sockets()
            {
                return Err(StepError::permanent(
                    crate::codes::EGRESS_DENIED,
                    format!(
                        "egress to the unix socket {socket} is denied by the worker's egress \
                         policy ({}.allow_unix_sockets)",
                        policy.setting()
                    ),
                ));
            }
        }
        let given = config.get_hostaddrs().to_vec();
        if !given.is_empty() {
            // The DSN names the addresses: check those, with their host names.
            for (i, addr) in given.iter().enumerate() {
                let name = match hosts.get(i) {
                    Some(Host::Tcp(name)) => name.clone(),
                    _ => addr.to_string(),
                };
                let port = port_of(i);
                policy.check(&name, &[*addr]).map_err(|_| {
                    self.egress
                        .denied(&addr.to_string(), Some(port))
                        .into_step_error()
                })?;
            }
            return Ok(config);
        }
        for (i, host) in hosts.iter().enumerate() {
            let Host::Tcp(name) = host else {
                continue;
            };
            let port = port_of(i);
            let addrs = self
                .egress
                .resolve(name, port)
                .await
                .map_err(|e| e.into_step_error(codes::SQL_CONNECT))?;
            if let Some(addr) = addrs.first() {
                config.hostaddr(addr.ip());
            }
        }
        Ok(config)
    }

    /// The pool for `dsn` at its checked addresses, made on first use.
    fn pool(&self, dsn: &str, config: tokio_postgres::Config) -> Result<Pool, StepError> {
        let mut pools = self
            .pools
            .lock()
            .map_err(|_| StepError::internal("the sql pool registry is poisoned"))?;
        // A name that resolves elsewhere later gets a pool of its own: a pool only ever
        // connects to the addresses that were checked when it was made.
        let key = format!("{:?}\n{dsn}", config.get_hostaddrs());
        if let Some(pool) = pools.get(&key) {
            return Ok(pool.clone());
        }
        let manager = Manager::from_config(
            config,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(Runtime::Tokio1)
            .create_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| StepError::internal(format!("could not build a connection pool: {e}")))?;
        pools.insert(key, pool.clone());
        Ok(pool)
    }

    async fn run(
        &self,
        ctx: &TaskContext,
        pool: Pool,
        target: &Target,
        action: Action<'_>,
    ) -> Result<Json, StepError> {
        let mut client = pool.get().await.map_err(|e| match e {
            // The server answered (a wrong password, an unknown database): its report.
            deadpool_postgres::PoolError::Backend(err) if err.as_db_error().is_some() => {
                statement_error(&err, target)
            }
            // Refused, timed out, reset: the same words, whichever it was.
            _ => StepError::retryable(
                codes::SQL_CONNECT,
                format!("cannot connect to {}", target.name),
            ),
        })?;
        let cancel_token = client.cancel_token();
        let tx = client
            .transaction()
            .await
            .map_err(|e| statement_error(&e, target))?;
        let work = async {
            let output = match action {
                Action::Query(sql, params) => {
                    let statement = tx
                        .prepare(sql)
                        .await
                        .map_err(|e| statement_error(&e, target))?;
                    let params = bind(statement.params(), params, "params")?;
                    let rows = tx
                        .query(&statement, &refs(&params))
                        .await
                        .map_err(|e| statement_error(&e, target))?;
                    let rows = rows
                        .iter()
                        .map(row_to_json)
                        .collect::<Result<Vec<_>, _>>()?;
                    json!({"count": rows.len(), "rows": rows})
                }
                Action::Execute(sql, params) => {
                    let statement = tx
                        .prepare(sql)
                        .await
                        .map_err(|e| statement_error(&e, target))?;
                    let params = bind(statement.params(), params, "params")?;
                    let affected = tx
                        .execute(&statement, &refs(&params))
                        .await
                        .map_err(|e| statement_error(&e, target))?;
                    json!({"affected": affected})
                }
                Action::Insert(insert) => {
                    let mut affected = 0;
                    let batch = (MAX_BATCH_PARAMS / insert.columns.len()).clamp(1, MAX_BATCH_ROWS);
                    for (n, rows) in insert.rows.chunks(batch).enumerate() {
                        let sql = insert.sql(rows.len());
                        let statement = tx
                            .prepare(&sql)
                            .await
                            .map_err(|e| statement_error(&e, target))?;
                        let values = insert.values(rows, n * batch)?;
                        let params = bind_insert(statement.params(), &values)?;
                        affected += tx
                            .execute(&statement, &refs(&params))
                            .await
                            .map_err(|e| statement_error(&e, target))?;
                    }
                    json!({"affected": affected})
                }
            };
            Ok::<_, StepError>(output)
        };
        let result = tokio::select! {
            result = work => result,
            () = ctx.cancel.cancelled() => {
                // Stop the statement on the server; dropping the transaction rolls it back.
                if let Err(e) = cancel_token.cancel_query(NoTls).await {
                    tracing::warn!(db = %target.name, error = %e, "could not cancel a statement");
                }
                return Err(StepError::cancelled());
            }
        };
        match result {
            Ok(output) => {
                tx.commit().await.map_err(|e| statement_error(&e, target))?;
                Ok(output)
            }
            Err(err) => {
                if let Err(e) = tx.rollback().await {
                    tracing::warn!(db = %target.name, error = %e, "rollback failed");
                }
                Err(err)
            }
        }
    }
}

#[async_trait]
impl Executor for SqlExecutor {
    fn kind(&self) -> &'static str {
        "sql"
    }

    fn receives_secrets(&self) -> bool {
        true
    }

    async fn execute(&self, ctx: &TaskContext, input: Json) -> Result<Json, StepError> {
        let fields = Input::new(&input)?;
        fields.deny_unknown(&FIELDS)?;
        let dsn = fields.required_str("dsn")?;
        let config: tokio_postgres::Config = dsn.trim().parse().map_err(|_| {
            StepError::invalid_input(
                "`dsn` is not a PostgreSQL connection string such as \
                 `postgresql://user@host:5432/dbname`",
            )
        })?;
        let target = Target::new(&config);
        let action = parse_action(&fields)?;
        let config = self.checked(config).await?;
        if let Action::Insert(insert) = &action
            && insert.rows.is_empty()
        {
            return Ok(json!({"affected": 0}));
        }
        let pool = self.pool(dsn, config)?;
        self.run(ctx, pool, &target, action).await
    }
}

/// Converts `values` to the statement's parameter types; `field` names the list in errors.
fn bind(
    types: &[tokio_postgres::types::Type],
    values: &[Json],
    field: &str,
) -> Result<Vec<Param>, StepError> {
    if types.len() != values.len() {
        return Err(StepError::invalid_input(format!(
            "`{field}` has {} value{} but the statement takes {}",
            values.len(),
            if values.len() == 1 { "" } else { "s" },
            types.len()
        )));
    }
    types
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (ty, value))| Param::convert(&format!("{field}[{i}]"), ty, value))
        .collect()
}

fn bind_insert(
    types: &[tokio_postgres::types::Type],
    values: &[(String, &Json)],
) -> Result<Vec<Param>, StepError> {
    types
        .iter()
        .zip(values)
        .map(|(ty, (field, value))| Param::convert(field, ty, value))
        .collect()
}

fn refs(params: &[Param]) -> Vec<&(dyn ToSql + Sync)> {
    params.iter().map(|p| p as &(dyn ToSql + Sync)).collect()
}

/// A failed statement: PostgreSQL's own report when there is one, else a broken connection.
fn statement_error(err: &tokio_postgres::Error, target: &Target) -> StepError {
    let Some(db) = err.as_db_error() else {
        return StepError::retryable(
            codes::SQL_CONNECT,
            target.redact(format!("the connection to {} failed: {err}", target.name)),
        );
    };
    let state = db.code().code();
    let mut message = format!("{} (SQLSTATE {state}", db.message());
    match db.position() {
        Some(tokio_postgres::error::ErrorPosition::Original(at)) => {
            message.push_str(&format!(", at character {at}"));
        }
        Some(tokio_postgres::error::ErrorPosition::Internal { position, .. }) => {
            message.push_str(&format!(", at character {position} of an internal query"));
        }
        None => {}
    }
    message.push(')');
    if let Some(detail) = db.detail() {
        message.push_str(&format!("; detail: {detail}"));
    }
    if let Some(hint) = db.hint() {
        message.push_str(&format!("; hint: {hint}"));
    }
    StepError::new(
        codes::SQL_ERROR,
        target.redact(message),
        RETRYABLE_STATES.contains(&state),
    )
}

#[cfg(test)]
mod tests;
