//! Test support: the same test bodies against both backends.
//!
//! [`backend_tests!`](crate::backend_tests) turns `async fn name(b: Backend)` test bodies into
//! `sqlite::name` and `postgres::name` tests. The PostgreSQL ones run on a throwaway cluster
//! (`tools/pg-test-cluster.sh run`, started once per test process and stopped when it exits)
//! or on `FERRY_TEST_POSTGRES_URL` when set; each test gets a database of its own.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Mutex, OnceLock};

use sqlx::{Connection, Executor};

use crate::{Durability, Store};

/// Which database a test's store runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A database for one test: opened (and reopened) with [`TestDatabase::open`].
#[derive(Clone, Debug)]
pub struct TestDatabase {
    /// `None` for SQLite in the data dir.
    pub url: Option<String>,
}

impl TestDatabase {
    /// A fresh, empty database of `backend`.
    pub async fn new(backend: Backend) -> TestDatabase {
        match backend {
            Backend::Sqlite => TestDatabase { url: None },
            Backend::Postgres => TestDatabase { url: Some(fresh_postgres_database().await) },
        }
    }

    /// Opens the store on this database with `data_dir` (the secret key's home).
    pub async fn open(&self, data_dir: &Path) -> Store {
        Store::connect(data_dir, Durability::Full, self.url.as_deref()).await.expect("the test store opens")
    }
}

/// The URL of the test cluster's maintenance database (started on first use).
pub fn postgres_cluster() -> String {
    static CLUSTER: OnceLock<String> = OnceLock::new();
    static LIFELINE: Mutex<Option<Child>> = Mutex::new(None);
    CLUSTER
        .get_or_init(|| {
            if let Ok(url) = std::env::var("FERRY_TEST_POSTGRES_URL") {
                return url;
            }
            let script = repo_root().join("tools/pg-test-cluster.sh");
            let mut child = Command::new("bash")
                .arg(&script)
                .arg("run")
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|e| panic!("cannot run {}: {e}", script.display()));
            let mut line = String::new();
            BufReader::new(child.stdout.take().expect("piped")).read_line(&mut line).expect("the cluster's URL");
            assert!(line.starts_with("postgres://"), "{} did not start a cluster (is PostgreSQL installed? tools/setup.d/postgres.sh)", script.display());
            // Its stdin stays open while this process lives: the cluster stops when it exits.
            *LIFELINE.lock().unwrap() = Some(child);
            line.trim().to_string()
        })
        .clone()
}

/// A new, empty database on the test cluster; returns its URL.
pub async fn fresh_postgres_database() -> String {
    let base = postgres_cluster();
    let name = format!("t_{}", crate::util::random_secret(16).to_lowercase());
    let mut conn = sqlx::PgConnection::connect(&base).await.expect("the test cluster answers");
    conn.execute(format!("CREATE DATABASE {name}").as_str()).await.expect("CREATE DATABASE");
    conn.close().await.ok();
    let (server, _) = base.rsplit_once('/').expect("a URL with a database");
    format!("{server}/{name}")
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Runs each named `async fn(Backend)` as a test on SQLite (`sqlite::name`) and on PostgreSQL
/// (`postgres::name`).
#[macro_export]
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::Backend::Sqlite).await
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name($crate::testing::Backend::Postgres).await
                }
            )*
        }
    };
}
