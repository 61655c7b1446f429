//! `df-reconciler demo`: a throwaway PostgreSQL, both schemas, a realistic seeded mix, a
//! dry run and a real pass. The cluster is removed when [`Demo`] is dropped.

use std::time::Duration;

use tokio_postgres::NoTls;
use tokio_util::sync::CancellationToken;

use df_reconciler_core::config::{Config, SecretString};
use df_reconciler_core::error::describe_pg_error;
use df_reconciler_core::pass::{self, PassFailed};
use df_reconciler_core::report::PassReport;
use df_reconciler_testkit::{fixture, ThrowawayCluster, ThrowawayError};

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Cluster(#[from] ThrowawayError),
    #[error("seeding the demo database failed: {0}")]
    Seed(String),
    #[error("the {what} pass failed: {error}")]
    Pass { what: &'static str, error: String },
}

/// The demo's database, live until dropped.
pub struct Demo {
    // Field order matters: the pool's connections close before the cluster stops.
    pub config: Config,
    cluster: ThrowawayCluster,
}

/// What a demo run shows.
pub struct DemoOutcome {
    pub dry_run: PassReport,
    pub real: PassReport,
    /// A second real pass: it must find nothing (idempotence).
    pub again: PassReport,
}

impl Demo {
    /// Starts the cluster and seeds it. Blocking parts run off the async runtime.
    pub async fn start() -> Result<Demo, DemoError> {
        let cluster = tokio::task::spawn_blocking(ThrowawayCluster::start)
            .await
            .map_err(|e| DemoError::Seed(e.to_string()))??;
        let admin_dsn = cluster.dsn("postgres");
        let (client, conn) = tokio_postgres::connect(&admin_dsn, NoTls)
            .await
            .map_err(|e| DemoError::Seed(describe_pg_error(&e)))?;
        let task = tokio::spawn(conn);
        client
            .batch_execute("CREATE DATABASE demo")
            .await
            .map_err(|e| DemoError::Seed(describe_pg_error(&e)))?;
        drop(client);
        let _ = task.await;
        let dsn = cluster.dsn("demo");
        let (client, conn) = tokio_postgres::connect(&dsn, NoTls)
            .await
            .map_err(|e| DemoError::Seed(describe_pg_error(&e)))?;
        let task = tokio::spawn(conn);
        for (what, sql) in [
            ("schemas", fixture::SCHEMA_SQL),
            ("seed functions", fixture::SEED_FUNCTIONS_SQL),
            ("demo population", fixture::DEMO_SEED_SQL),
        ] {
            client
                .batch_execute(sql)
                .await
                .map_err(|e| DemoError::Seed(format!("{what}: {}", describe_pg_error(&e))))?;
        }
        drop(client);
        let _ = task.await;
        let mut config = Config::default();
        config.database.url = Some(SecretString::new(dsn));
        config.database.connect_timeout = Duration::from_secs(5);
        Ok(Demo { config, cluster })
    }

    pub fn cluster(&self) -> &ThrowawayCluster {
        &self.cluster
    }

    /// A dry run, a real pass, and a second real pass.
    pub async fn run(&self) -> Result<DemoOutcome, DemoError> {
        let pool = df_reconciler_core::db::build_pool(&self.config)
            .map_err(|e| DemoError::Seed(e.to_string()))?;
        let shutdown = CancellationToken::new();
        let pass = |dry_run: bool, what: &'static str| {
            let pool = &pool;
            let shutdown = &shutdown;
            async move {
                pass::run_pass(pool, &self.config, dry_run, shutdown)
                    .await
                    .map_err(|PassFailed { error, .. }| DemoError::Pass {
                        what,
                        error: error.to_string(),
                    })
            }
        };
        let dry_run = pass(true, "dry-run").await?;
        let real = pass(false, "real").await?;
        let again = pass(false, "second").await?;
        pool.close();
        Ok(DemoOutcome {
            dry_run,
            real,
            again,
        })
    }
}
