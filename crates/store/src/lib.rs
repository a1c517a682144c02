//! Ferry's durable state.
//!
//! One [`Store`] owns the database (SQLite inside the data dir for the embedded default) and is
//! the only component that speaks SQL. It knows nothing of the Modal wire types: the protocol
//! adapter translates requests into these calls. Blocking reads (queue gets, log tails) wait on
//! in-process notifications that every write fires.

mod apps;
mod auth;
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
mod sandboxes;
mod secrets;
pub use secrets::SecretInfo;
mod seal;
mod util;
mod web;
mod volumes;

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use apps::{App, AppState, LogEntry};
pub use auth::{Principal, TokenInfo, TokenScope};
pub use calls::{AnswerRecord, CallRecord, CallWrite, QueuedRecord, WriteOutcome};
pub use deployments::{Deployment, DeploymentInfo, ScheduleRecord, VersionChange};
pub use environments::Environment;
pub use image_names::{ImageBuildTimes, ImageName, ImageNameRevision};
pub use functions::{FunctionRecord, ImageRecord, Mount, MountEntry};
pub use error::{Result, StoreError};
pub use objects::{CreationMode, NamedObject, ObjectKind};
pub use queues::{QueueItem, QueueLimits, QueueSummary};
pub use sandboxes::{SandboxFilter, SandboxRecord};
pub use util::{format_utc, new_id, now};
pub use web::{ProxyTokenInfo, WebRoute};
pub use volumes::{EntryKind, VolumeChange, VolumeEntry};

use util::Notifier;

/// How hard the store works to keep a committed write across a power loss.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Durability {
    /// fsync on every commit: nothing acknowledged is ever lost.
    #[default]
    Full,
    /// fsync at checkpoints: survives a process crash, may lose the last commits on power loss.
    Normal,
}

/// The handle every server component shares. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: SqlitePool,
    data_dir: std::path::PathBuf,
    notify: Arc<Notifier>,
    seal: Arc<std::sync::RwLock<Arc<seal::SecretSeal>>>,
    /// Serialises multi-statement write transactions: SQLite has one writer, and taking turns
    /// here avoids the busy errors of upgrading a read transaction to a write one.
    write_lock: Arc<tokio::sync::Mutex<()>>,
}

impl Store {
    /// Opens (creating if needed) the embedded database in `data_dir`.
    ///
    /// ```no_run
    /// # async fn f() -> ferry_store::Result<()> {
    /// let store = ferry_store::Store::open(std::path::Path::new("/var/lib/ferry"), Default::default()).await?;
    /// let env = store.default_environment().await?;
    /// # Ok(()) }
    /// ```
    pub async fn open(data_dir: &Path, durability: Durability) -> Result<Store> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StoreError::Io(format!("cannot create data dir {}: {e}", data_dir.display())))?;
        let db = data_dir.join("ferry.db");
        let opts = SqliteConnectOptions::from_str(&format!("sqlite://{}", db.display()))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(match durability {
                Durability::Full => SqliteSynchronous::Full,
                Durability::Normal => SqliteSynchronous::Normal,
            })
            .busy_timeout(Duration::from_secs(30))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(opts).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        let seal = seal::SecretSeal::load(data_dir, &pool).await?;
        let store = Store {
            pool,
            data_dir: data_dir.to_path_buf(),
            notify: Arc::new(Notifier::default()),
            seal: Arc::new(std::sync::RwLock::new(Arc::new(seal))),
            write_lock: Arc::new(tokio::sync::Mutex::new(())),
        };
        store.default_environment().await?;
        Ok(store)
    }

    /// The data dir this store lives in.
    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }
}
