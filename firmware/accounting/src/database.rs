//! The database backend: one row per finished session in MediaProxy's
//! layout (call_id, from_tag, to_tag, info = the statistics JSON), unique on
//! the three tags so a redelivered record is not stored twice. SQLite,
//! PostgreSQL and MySQL/MariaDB through sqlx.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use relaybox_proto::SessionStats;
use sqlx::any::AnyPoolOptions;
use sqlx::AnyPool;

use crate::{Backend, BackendError};

/// What the `[Database]` section says.
#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// MediaProxy's `dburi`: `mysql://user:pw@host/db`, `postgres://...`,
    /// `sqlite:///path/to/file`.
    pub dburi: String,
    pub sessions_table: String,
    pub callid_column: String,
    pub fromtag_column: String,
    pub totag_column: String,
    pub info_column: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
    MySql,
}

pub struct DatabaseBackend {
    settings: DatabaseSettings,
    dialect: Dialect,
    pool: AnyPool,
    table_ready: AtomicBool,
    schema_error: std::sync::Mutex<Option<String>>,
}

fn check_identifier(what: &str, v: &str) -> Result<(), String> {
    if v.is_empty() || v.len() > 64 || !v.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("{what} {v:?} must be letters, digits and _ (at most 64)"));
    }
    Ok(())
}

/// Turns MediaProxy's dburi into an sqlx URL and its dialect.
pub fn sqlx_url(dburi: &str) -> Result<(String, Dialect), String> {
    let (scheme, rest) = dburi.split_once(':').ok_or_else(|| format!("dburi {dburi:?} has no scheme"))?;
    match scheme {
        "sqlite" => {
            let path = rest.strip_prefix("//").unwrap_or(rest);
            if path.is_empty() {
                return Err("sqlite dburi needs a file path: sqlite:///path/to/file".into());
            }
            Ok((format!("sqlite://{path}?mode=rwc"), Dialect::Sqlite))
        }
        "postgres" | "postgresql" => Ok((dburi.to_string(), Dialect::Postgres)),
        "mysql" | "mariadb" => Ok((format!("mysql:{rest}"), Dialect::MySql)),
        other => Err(format!("dburi scheme {other:?} is not supported (sqlite, postgres, mysql)")),
    }
}

impl DatabaseBackend {
    /// Checks the settings and prepares a lazy pool: nothing connects until
    /// the first record, so a database that is down at start-up is fine.
    pub fn new(settings: DatabaseSettings) -> Result<Self, String> {
        check_identifier("sessions_table", &settings.sessions_table)?;
        check_identifier("callid_column", &settings.callid_column)?;
        check_identifier("fromtag_column", &settings.fromtag_column)?;
        check_identifier("totag_column", &settings.totag_column)?;
        check_identifier("info_column", &settings.info_column)?;
        let (url, dialect) = sqlx_url(&settings.dburi)?;
        sqlx::any::install_default_drivers();
        let pool = AnyPoolOptions::new()
            .max_connections(2)
            .acquire_timeout(Duration::from_secs(5))
            .connect_lazy(&url)
            .map_err(|e| format!("dburi: {e}"))?;
        Ok(DatabaseBackend {
            settings,
            dialect,
            pool,
            table_ready: AtomicBool::new(false),
            schema_error: std::sync::Mutex::new(None),
        })
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    /// The statement that creates the table, also printed for an operator
    /// when the configured user may not run it.
    pub fn create_table_sql(&self) -> String {
        let s = &self.settings;
        let (t, c, f, tt, i) =
            (&s.sessions_table, &s.callid_column, &s.fromtag_column, &s.totag_column, &s.info_column);
        match self.dialect {
            Dialect::Sqlite => format!(
                "CREATE TABLE IF NOT EXISTS {t} (id INTEGER PRIMARY KEY AUTOINCREMENT, {c} VARCHAR(255) NOT NULL, {f} VARCHAR(64) NOT NULL, {tt} VARCHAR(64) NOT NULL DEFAULT '', {i} TEXT, UNIQUE ({c}, {f}, {tt}))"
            ),
            Dialect::Postgres => format!(
                "CREATE TABLE IF NOT EXISTS {t} (id SERIAL PRIMARY KEY, {c} VARCHAR(255) NOT NULL, {f} VARCHAR(64) NOT NULL, {tt} VARCHAR(64) NOT NULL DEFAULT '', {i} TEXT, UNIQUE ({c}, {f}, {tt}))"
            ),
            Dialect::MySql => format!(
                "CREATE TABLE IF NOT EXISTS {t} (id INT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY, {c} VARCHAR(255) NOT NULL, {f} VARCHAR(64) NOT NULL, {tt} VARCHAR(64) NOT NULL DEFAULT '', {i} MEDIUMBLOB, UNIQUE KEY {t}_callid_idx ({c}, {f}, {tt}))"
            ),
        }
    }

    fn insert_sql(&self) -> String {
        let s = &self.settings;
        let (t, c, f, tt, i) =
            (&s.sessions_table, &s.callid_column, &s.fromtag_column, &s.totag_column, &s.info_column);
        match self.dialect {
            Dialect::Sqlite => format!("INSERT OR IGNORE INTO {t} ({c}, {f}, {tt}, {i}) VALUES (?, ?, ?, ?)"),
            Dialect::Postgres => {
                format!("INSERT INTO {t} ({c}, {f}, {tt}, {i}) VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING")
            }
            Dialect::MySql => format!("INSERT IGNORE INTO {t} ({c}, {f}, {tt}, {i}) VALUES (?, ?, ?, ?)"),
        }
    }

    async fn ensure_table(&self) -> Result<(), BackendError> {
        if self.table_ready.load(Ordering::Relaxed) {
            return Ok(());
        }
        let sql = self.create_table_sql();
        match sqlx::query(&sql).execute(&self.pool).await {
            Ok(_) => {
                self.table_ready.store(true, Ordering::Relaxed);
                Ok(())
            }
            Err(e) if is_connection_error(&e) => Err(BackendError::Unavailable(format!("database: {e}"))),
            Err(e) => {
                // Probably no CREATE right: say what to run, then try the
                // insert anyway (an operator may have made the table).
                let message = format!("cannot create the sessions table ({e}); create it with: {sql};");
                tracing::error!(table = %self.settings.sessions_table, "accounting: {message}");
                *self.schema_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(message);
                self.table_ready.store(true, Ordering::Relaxed);
                Ok(())
            }
        }
    }

    /// Delivers one record now (also used by tests).
    pub async fn insert(&self, record: &SessionStats) -> Result<(), BackendError> {
        self.ensure_table().await?;
        let result = sqlx::query(&self.insert_sql())
            .bind(record.call_id.clone())
            .bind(record.from_tag.clone())
            .bind(record.to_tag.clone().unwrap_or_default())
            .bind(record.to_json())
            .execute(&self.pool)
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(e) => {
                if !is_connection_error(&e) {
                    // The table may have been dropped behind our back.
                    self.table_ready.store(false, Ordering::Relaxed);
                }
                Err(BackendError::Unavailable(format!("database insert: {e}")))
            }
        }
    }

    /// The last failure to create the table, with the statement to run.
    pub fn schema_error(&self) -> Option<String> {
        self.schema_error.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }
}

fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Tls(_))
}

impl Backend for DatabaseBackend {
    fn name(&self) -> &str {
        "database"
    }

    fn deliver<'a>(
        &'a self,
        record: &'a SessionStats,
    ) -> Pin<Box<dyn Future<Output = Result<(), BackendError>> + Send + 'a>> {
        Box::pin(self.insert(record))
    }

    fn prepare(&self) -> Pin<Box<dyn Future<Output = Result<(), BackendError>> + Send + '_>> {
        Box::pin(self.ensure_table())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sqlx::Row;

    pub(crate) fn settings(dburi: &str) -> DatabaseSettings {
        DatabaseSettings {
            dburi: dburi.into(),
            sessions_table: "media_sessions".into(),
            callid_column: "call_id".into(),
            fromtag_column: "from_tag".into(),
            totag_column: "to_tag".into(),
            info_column: "info".into(),
        }
    }

    #[test]
    fn dburi_forms() {
        assert_eq!(
            sqlx_url("sqlite:///var/lib/x.db").unwrap(),
            ("sqlite:///var/lib/x.db?mode=rwc".into(), Dialect::Sqlite)
        );
        assert_eq!(sqlx_url("sqlite:/x.db").unwrap().1, Dialect::Sqlite);
        assert_eq!(sqlx_url("mysql://u:p@h/db").unwrap(), ("mysql://u:p@h/db".into(), Dialect::MySql));
        assert_eq!(sqlx_url("postgresql://u@h/db").unwrap().1, Dialect::Postgres);
        assert!(sqlx_url("oracle://x").is_err());
        assert!(sqlx_url("nothing").is_err());
        let mut bad = settings("sqlite:///tmp/x.db");
        bad.sessions_table = "t; DROP TABLE x".into();
        assert!(DatabaseBackend::new(bad).is_err(), "identifiers are checked");
    }

    #[tokio::test]
    async fn the_table_is_created_at_start_before_any_record() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("sqlite://{}/start.db", dir.path().display());
        let db = std::sync::Arc::new(DatabaseBackend::new(settings(&uri)).unwrap());
        let _acc = crate::Accounting::start(&dir.path().join("spool"), vec![db.clone()], crate::Retry::default(), 1000)
            .unwrap();
        let mut found = false;
        for _ in 0..100 {
            let q = sqlx::query("SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'media_sessions'");
            if q.fetch_optional(db.pool()).await.ok().flatten().is_some() {
                found = true;
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(found, "media_sessions was not created at start");
    }

    #[tokio::test]
    async fn sqlite_table_created_and_rows_written_once() {
        let dir = tempfile::tempdir().unwrap();
        let uri = format!("sqlite://{}/acct.db", dir.path().display());
        let db = DatabaseBackend::new(settings(&uri)).unwrap();
        let rec = crate::tests::stats("sq1");
        db.insert(&rec).await.unwrap();
        db.insert(&rec).await.unwrap(); // redelivery after an unknown outcome
        db.insert(&crate::tests::stats("sq2")).await.unwrap();
        let rows = sqlx::query("SELECT call_id, from_tag, to_tag, info FROM media_sessions ORDER BY id")
            .fetch_all(db.pool())
            .await
            .unwrap();
        assert_eq!(rows.len(), 2);
        let info: String = rows[0].get(3);
        assert_eq!(SessionStats::from_json(&info).unwrap(), rec);
        let to_tag: String = rows[0].get(2);
        assert_eq!(to_tag, "t");
    }
}
