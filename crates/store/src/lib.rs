//! Ferry's durable state.
//!
//! One [`Store`] owns the database (SQLite inside the data dir for the embedded default) and is
//! the only component that speaks SQL. It knows nothing of the Modal wire types: the protocol
//! adapter translates requests into these calls. Blocking reads (queue gets, log tails) wait on
//! notifications that every write fires: in-process on SQLite, and on PostgreSQL also relayed
//! to every other replica on the same database with `NOTIFY`.

mod apps;
mod auth;
mod call_graph;
mod calls;
mod deployments;
mod dicts;
mod environments;
mod error;
mod files;
mod functions;
mod gpus;
mod image_names;
mod objects;
mod queues;
mod replicas;
mod sandboxes;
mod secrets;
pub use secrets::SecretInfo;
mod seal;
mod notify;
mod util;
#[doc(hidden)]
pub mod testing;
mod web;
mod volumes;
mod workers;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::any::AnyPoolOptions;
use sqlx::{AnyPool, Connection, Executor};

pub use apps::{App, AppState, LogEntry, LogFilter, NewLog};
pub use auth::{Principal, TokenInfo, TokenScope};
pub use call_graph::{GraphCall, GraphInput};
pub use calls::{AnswerRecord, CallProgress, CallRecord, CallWrite, QueuedRecord, WriteOutcome};
pub use deployments::{Deployment, DeploymentInfo, ScheduleRecord, VersionChange};
pub use environments::Environment;
pub use image_names::{ImageBuildTimes, ImageName, ImageNameRevision};
pub use functions::{FunctionRecord, ImageRecord, Mount, MountEntry};
pub use error::{Result, StoreError};
pub use objects::{CreationMode, NamedObject, ObjectKind};
pub use queues::{QueueItem, QueueLimits, QueueSummary};
pub use replicas::{Adoption, CallOwner, ReplicaRecord};
pub use sandboxes::{SandboxFilter, SandboxRecord};
pub use util::{format_utc, new_id, now};
pub use web::{ProxyTokenInfo, WebRoute};
pub use volumes::{EntryKind, VolumeChange, VolumeEntry};
pub use workers::{NewWorker, NewWorkerTask, WorkerRecord, WorkerTaskState};

use util::Notifier;
pub use util::redact_database_url;

/// The PostgreSQL advisory lock that multi-statement writers hold ("ferry" in ASCII).
const WRITE_LOCK_KEY: i64 = 0x6665_7272_79;

/// How hard the store works to keep a committed write across a power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every commit: nothing acknowledged is ever lost.
    #[default]
    Full,
    /// fsync at checkpoints: survives a process crash, may lose the last commits on power loss.
    Normal,
}

/// The database engine a store runs on; the few statements whose dialects differ match on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// The embedded default: `DATA_DIR/ferry.db`.
    Sqlite,
    /// A PostgreSQL server (`--database postgres://…`), which several replicas may share.
    Postgres,
}

/// How long a caller waits for a database connection before the store reports the database
/// unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest one statement may run on PostgreSQL before the server cancels it.
const STATEMENT_TIMEOUT: &str = "60s";

/// The handle every server component shares. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The database as messages name it: the SQLite file, or the URL without its password.
    location: Arc<str>,
    data_dir: std::path::PathBuf,
    notify: Arc<Notifier>,
    seal: Arc<std::sync::RwLock<Arc<seal::SecretSeal>>>,
    /// Serialises multi-statement write transactions: SQLite has one writer, and taking turns
    /// here avoids the busy errors of upgrading a read transaction to a write one. On
    /// PostgreSQL [`Store::begin_write`] also takes a lock all replicas share.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// The replica that owns the calls this store creates (`replicas.rs`), once set.
    replica: Arc<std::sync::OnceLock<String>>,
}

/// How much of the SQLite database file is read through a memory map.
const SQLITE_MMAP_BYTES: u64 = 1 << 30;

impl Store {
    /// Replaces the JSON `tags` column of row `id` in `table` (apps, sandboxes); `kind` names
    /// the object when there is no such row.
    pub(crate) async fn replace_tags(&self, table: &'static str, kind: &str, id: &str, tags: &std::collections::BTreeMap<String, String>) -> Result<()> {
        let json = serde_json::to_string(tags).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let done = sqlx::query(&format!("UPDATE {table} SET tags = $1 WHERE id = $2")).bind(json).bind(id).execute(&self.pool).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("{kind} {id} not found")));
        }
        Ok(())
    }

    /// Opens (creating if needed) the embedded database in `data_dir`.
    ///
    /// ```no_run
    /// # async fn f() -> ferry_store::Result<()> {
    /// let store = ferry_store::Store::open(std::path::Path::new("/var/lib/ferry"), Default::default()).await?;
    /// let env = store.default_environment().await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(data_dir: &Path, durability: Durability) -> Result<Store> {
        Store::connect(data_dir, durability, None).await
    }

    /// Opens the store on `database`, a `postgres://user:password@host:port/dbname` URL, or
    /// without one on the embedded SQLite database in `data_dir`. The data dir holds the secret
    /// key either way (replicas sharing a database share that key). `durability` applies to
    /// SQLite; PostgreSQL's is the server's own setting.
    pub async fn connect(data_dir: &Path, durability: Durability, database: Option<&str>) -> Result<Store> {
        sqlx::any::install_default_drivers();
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Io(format!("cannot create data dir {}: {e}", data_dir.display())))?;
        let (pool, backend, location) = match database {
            None => {
                let db = data_dir.join("ferry.db");
                let synchronous = match durability {
                    Durability::Full => "FULL",
                    Durability::Normal => "NORMAL",
                };
                // Pages of the database file are read through a memory map: a connection's
                // page cache starts over whenever another connection committed, and re-reading
                // through the map needs no system call per page.
                let pragmas: Arc<str> = format!(
                    "PRAGMA journal_mode = WAL; PRAGMA synchronous = {synchronous}; \
                     PRAGMA busy_timeout = 30000; PRAGMA foreign_keys = ON; PRAGMA mmap_size = {SQLITE_MMAP_BYTES};"
                )
                .into();
                let pool = AnyPoolOptions::new()
                    .max_connections(8)
                    // A connection to the embedded database cannot go away while it is idle; the
                    // check on each acquire would cost a round trip to its worker thread.
                    .test_before_acquire(false)
                    .after_connect(move |conn, _| {
                        let pragmas = pragmas.clone();
                        Box::pin(async move { conn.execute(&*pragmas).await.map(|_| ()) })
                    })
                    .connect(&format!("sqlite://{}?mode=rwc", db.display()))
                    .await?;
                sqlx::migrate!("./migrations").run(&pool).await?;
                (pool, Backend::Sqlite, db.display().to_string())
            }
            Some(url) => {
                let location = redact_database_url(url);
                if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
                    return Err(StoreError::Invalid(format!(
                        "unsupported database URL {location}: Ferry speaks postgres://user:password@host:port/dbname \
                         (leave --database out for the embedded SQLite database)"
                    )));
                }
                // One attempt first: a refused connection or a wrong password is reported at
                // once rather than retried until the pool gives up.
                match tokio::time::timeout(CONNECT_TIMEOUT, sqlx::AnyConnection::connect(url)).await {
                    Ok(Ok(probe)) => probe.close().await.unwrap_or(()),
                    Ok(Err(e)) => return Err(StoreError::Unavailable(format!("cannot connect to the database {location}: {e}"))),
                    Err(_) => {
                        return Err(StoreError::Unavailable(format!(
                            "cannot connect to the database {location}: no answer within {} s",
                            CONNECT_TIMEOUT.as_secs()
                        )))
                    }
                }
                let pool = AnyPoolOptions::new()
                    .max_connections(16)
                    .acquire_timeout(CONNECT_TIMEOUT)
                    .after_connect(|conn, _| {
                        Box::pin(async move {
                            conn.execute(format!("SET statement_timeout = '{STATEMENT_TIMEOUT}'").as_str()).await.map(|_| ())
                        })
                    })
                    .connect(url);
                let pool = match tokio::time::timeout(CONNECT_TIMEOUT, pool).await {
                    Ok(Ok(pool)) => pool,
                    Ok(Err(e)) => return Err(StoreError::Unavailable(format!("cannot connect to the database {location}: {e}"))),
                    Err(_) => {
                        return Err(StoreError::Unavailable(format!(
                            "cannot connect to the database {location}: no answer within {} s",
                            CONNECT_TIMEOUT.as_secs()
                        )))
                    }
                };
                error::set_server(&location);
                sqlx::migrate!("./migrations-postgres").run(&pool).await?;
                (pool, Backend::Postgres, location)
            }
        };
        let seal = seal::SecretSeal::load(data_dir, &pool).await?;
        let notify = Arc::new(Notifier::default());
        if let (Backend::Postgres, Some(url)) = (backend, database) {
            notify::relay(&notify, &pool, url, &location).await?;
        }
        let store = Store {
            pool,
            backend,
            location: location.into(),
            data_dir: data_dir.to_path_buf(),
            notify,
            seal: Arc::new(std::sync::RwLock::new(Arc::new(seal))),
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
            replica: Arc::default(),
        };
        store.default_environment().await?;
        Ok(store)
    }

    /// The database this store runs on, as logs may name it: the SQLite file, or the
    /// PostgreSQL URL without its password.
    pub fn database(&self) -> &str {
        &self.location
    }

    /// Begins a transaction that writes after reading: the writers take turns, in this process
    /// (the caller holds `write_lock`) and on PostgreSQL across every replica on the database
    /// (a transaction-scoped advisory lock), so what it read stays true until it commits.
    pub(crate) async fn begin_write(&self) -> Result<sqlx::Transaction<'static, sqlx::Any>> {
        match self.backend {
            Backend::Sqlite => Ok(self.pool.begin_with("BEGIN IMMEDIATE").await?),
            Backend::Postgres => {
                let mut tx = self.pool.begin().await?;
                sqlx::query("SELECT pg_advisory_xact_lock($1)").bind(WRITE_LOCK_KEY).execute(&mut *tx).await?;
                Ok(tx)
            }
        }
    }

    /// The data dir this store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}
