use std::sync::RwLock;

use thiserror::Error;

/// Errors of the store layer. The protocol adapter maps each variant to one gRPC status.
#[derive(Debug, Error)]
pub enum StoreError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    Io(String),
    /// The database server cannot be reached or does not answer in time (a caller may retry).
    #[error("{0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(sqlx::Error),
    #[error("database migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// The database server this process talks to, as errors name it (without its password). One
/// per process: a Ferry process opens one database (tests that open several name the last).
static SERVER: RwLock<Option<String>> = RwLock::new(None);

pub(crate) fn set_server(location: &str) {
    *SERVER.write().unwrap() = Some(location.to_string());
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> StoreError {
        let unreachable = matches!(e, sqlx::Error::PoolTimedOut | sqlx::Error::Io(_) | sqlx::Error::Tls(_) | sqlx::Error::PoolClosed)
            || matches!(&e, sqlx::Error::Database(d) if d.code().as_deref() == Some("57014"));
        match (unreachable, SERVER.read().unwrap().as_deref()) {
            (true, Some(server)) => {
                let why = match e {
                    sqlx::Error::PoolTimedOut => "no connection within 10 s".to_string(),
                    e => e.to_string(),
                };
                StoreError::Unavailable(format!("the database {server} is unavailable: {why}"))
            }
            _ => StoreError::Db(e),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;
