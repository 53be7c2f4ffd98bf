//! The shared backend: a PostgreSQL server. One connection per [`Postgres`], driven by
//! `tokio-postgres` on a runtime thread of its own; statements are prepared once per
//! connection and kept. A connection that breaks (the server restarted or went away) is
//! replaced on the next statement, so a database that comes back is used again without a
//! restart of Cove.

use std::{collections::HashMap, error::Error as StdError, sync::Mutex, time::Duration};

use bytes::BytesMut;
use futures::executor::block_on;
use tokio_postgres::{
    Client, NoTls, Statement,
    types::{IsNull, ToSql, Type, to_sql_checked},
};

use crate::{DbError, Result, Row, Sql, Value};

/// How long a connection attempt may take before the server counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

pub struct Postgres {
    config: tokio_postgres::Config,
    /// TLS as the URL's `sslmode` asks (none: `disable`; see [`crate::tls`]).
    connector: Option<tokio_postgres_rustls::MakeRustlsConnect>,
    /// Drives the connection's socket; shut down (without waiting) when this is dropped.
    runtime: Option<tokio::runtime::Runtime>,
    session: Mutex<Option<Session>>,
    /// What this connection holds for its process ([`Postgres::claim`]); taken again on
    /// every new connection.
    claimed: Mutex<Option<i64>>,
}

/// The client of a new connection, whose socket is driven by a task of its own.
fn connected<S, T>(
    (client, connection): (Client, tokio_postgres::Connection<S, T>),
) -> std::result::Result<Client, tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::warn!(%err, "the PostgreSQL connection ended");
        }
    });
    Ok(client)
}

/// A live connection and the statements prepared on it.
struct Session {
    client: Client,
    prepared: HashMap<String, Statement>,
}

impl Postgres {
    pub fn connect(url: &str) -> Result<Self> {
        let tls = crate::tls::split(url)?;
        let mut config: tokio_postgres::Config = tls.url.parse()?;
        config.ssl_mode(crate::tls::driver_mode(tls.mode));
        let connector = crate::tls::connector(&tls)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        config.application_name("cove");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("cove-postgres")
            .enable_all()
            .build()
            .map_err(|err| DbError::Io(err.to_string()))?;
        let db = Self {
            config,
            connector,
            runtime: Some(runtime),
            session: Mutex::new(None),
            claimed: Mutex::new(None),
        };
        // Reached once now, so a wrong URL or password is said at start.
        db.with(|_| Ok(()))?;
        Ok(db)
    }

    fn open_session(&self) -> Result<Session> {
        let (config, connector) = (self.config.clone(), self.connector.clone());
        let runtime = self.runtime.as_ref().ok_or(DbError::Closed)?;
        let connecting = runtime.spawn(async move {
            match connector {
                Some(tls) => connected(config.connect(tls).await?),
                None => connected(config.connect(NoTls).await?),
            }
        });
        let client = block_on(connecting)
            .map_err(|_| DbError::Closed)?
            .map_err(DbError::Unavailable)?;
        let mut session = Session {
            client,
            prepared: HashMap::new(),
        };
        let claimed = *self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(key) = claimed {
            take_claim(&mut On(&mut session), key)?;
        }
        Ok(session)
    }

    /// Holds `key` for this process for as long as it runs: another process that claims it
    /// is refused ([`DbError::Claimed`]). The claim is a session advisory lock, taken again
    /// when the connection is made again.
    pub fn claim(&self, key: i64) -> Result<()> {
        self.with(|sql| take_claim(sql, key))?;
        *self.claimed.lock().unwrap_or_else(|e| e.into_inner()) = Some(key);
        Ok(())
    }

    /// Runs `work` on the connection (made again first if it broke).
    pub fn with<T>(&self, work: impl FnOnce(&mut dyn Sql) -> Result<T>) -> Result<T> {
        let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if session.as_ref().is_none_or(|s| s.client.is_closed()) {
            *session = Some(self.open_session()?);
        }
        let Some(live) = session.as_mut() else {
            return Err(DbError::Closed);
        };
        let done = work(&mut On(live));
        if live.client.is_closed() {
            *session = None;
        }
        done
    }

    pub fn transaction<T>(&self, work: impl FnOnce(&mut dyn Sql) -> Result<T>) -> Result<T> {
        self.with(|sql| {
            sql.batch("BEGIN")?;
            match work(sql) {
                Ok(done) => {
                    sql.batch("COMMIT")?;
                    Ok(done)
                }
                Err(err) => {
                    if let Err(rollback) = sql.batch("ROLLBACK") {
                        tracing::debug!(%rollback, "a failed transaction could not be rolled back");
                    }
                    Err(err)
                }
            }
        })
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Statements on a session.
struct On<'a>(&'a mut Session);

impl On<'_> {
    fn prepared(&mut self, sql: &str) -> Result<Statement> {
        if let Some(statement) = self.0.prepared.get(sql) {
            return Ok(statement.clone());
        }
        let statement = block_on(self.0.client.prepare(&placeholders(sql))).map_err(classify)?;
        self.0.prepared.insert(sql.to_owned(), statement.clone());
        Ok(statement)
    }
}

impl Sql for On<'_> {
    fn execute(&mut self, sql: &str, params: &[Value]) -> Result<u64> {
        let statement = self.prepared(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        block_on(self.0.client.execute(&statement, &params)).map_err(classify)
    }

    fn query(&mut self, sql: &str, params: &[Value]) -> Result<Vec<Row>> {
        let statement = self.prepared(sql)?;
        let params: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as _).collect();
        let rows = block_on(self.0.client.query(&statement, &params)).map_err(classify)?;
        rows.iter().map(row).collect()
    }

    fn batch(&mut self, sql: &str) -> Result<()> {
        block_on(self.0.client.batch_execute(sql)).map_err(classify)
    }
}

fn take_claim(sql: &mut dyn Sql, key: i64) -> Result<()> {
    let taken = sql
        .query_row("SELECT pg_try_advisory_lock(?1)", &[Value::Int(key)])?
        .map_or(Ok(false), |row| row.flag(0))?;
    if taken {
        Ok(())
    } else {
        Err(DbError::Claimed(key.to_string()))
    }
}

/// A broken connection is [`DbError::Unavailable`]; anything else the statement's failure.
fn classify(err: tokio_postgres::Error) -> DbError {
    if err.is_closed()
        || (err.code().is_none() && err.source().is_some_and(|s| s.is::<std::io::Error>()))
    {
        DbError::Unavailable(err)
    } else {
        DbError::Postgres(err)
    }
}

fn row(row: &tokio_postgres::Row) -> Result<Row> {
    let mut values = Vec::with_capacity(row.len());
    for (i, column) in row.columns().iter().enumerate() {
        let ty = column.type_();
        let value = if *ty == Type::INT8 {
            row.try_get::<_, Option<i64>>(i)?.map(Value::Int)
        } else if *ty == Type::INT4 {
            row.try_get::<_, Option<i32>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::INT2 {
            row.try_get::<_, Option<i16>>(i)?
                .map(|v| Value::Int(v.into()))
        } else if *ty == Type::BOOL {
            row.try_get::<_, Option<bool>>(i)?.map(Value::from)
        } else if [Type::TEXT, Type::VARCHAR, Type::NAME, Type::BPCHAR].contains(ty) {
            row.try_get::<_, Option<String>>(i)?.map(Value::Text)
        } else {
            return Err(DbError::Column {
                column: i,
                found: "a type Cove does not store",
                wanted: "text or an integer",
            });
        };
        values.push(value.unwrap_or(Value::Null));
    }
    Ok(Row(values))
}

/// `?1` (SQLite's and the callers' placeholders) as PostgreSQL's `$1`.
fn placeholders(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '?' && chars.peek().is_some_and(char::is_ascii_digit) {
            out.push('$');
        } else {
            out.push(c);
        }
    }
    out
}

/// `url` without its password.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info
                .split_once(':')
                .map_or(user_info, |(user, _)| user);
            let hidden = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

impl ToSql for Value {
    fn to_sql(
        &self,
        ty: &Type,
        out: &mut BytesMut,
    ) -> std::result::Result<IsNull, Box<dyn StdError + Sync + Send>> {
        match self {
            Value::Null => Ok(IsNull::Yes),
            Value::Text(text) => text.as_str().to_sql(ty, out),
            Value::Int(v) => {
                if *ty == Type::INT8 {
                    v.to_sql(ty, out)
                } else if *ty == Type::INT4 {
                    i32::try_from(*v)?.to_sql(ty, out)
                } else if *ty == Type::INT2 {
                    i16::try_from(*v)?.to_sql(ty, out)
                } else if *ty == Type::BOOL {
                    (*v != 0).to_sql(ty, out)
                } else {
                    Err(format!("an integer cannot be a parameter of type {ty}").into())
                }
            }
        }
    }

    fn accepts(ty: &Type) -> bool {
        [
            Type::INT8,
            Type::INT4,
            Type::INT2,
            Type::BOOL,
            Type::TEXT,
            Type::VARCHAR,
            Type::NAME,
            Type::BPCHAR,
        ]
        .contains(ty)
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_and_redaction() {
        assert_eq!(
            placeholders("SELECT a FROM t WHERE b = ?1 AND c IN (?2, ?12)"),
            "SELECT a FROM t WHERE b = $1 AND c IN ($2, $12)"
        );
        assert_eq!(
            redacted("postgres://cove:secret@db:5432/cove"),
            "postgres://cove:***@db:5432/cove"
        );
        assert_eq!(
            redacted("postgres://cove@127.0.0.1:1/cove"),
            "postgres://cove@127.0.0.1:1/cove"
        );
    }
}
