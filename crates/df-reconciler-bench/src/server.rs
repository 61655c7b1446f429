//! The benchmark's throwaway PostgreSQL and its databases: one seeded template per size,
//! copied (`CREATE DATABASE ... TEMPLATE`) for every measurement that deletes.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use df_reconciler_core::config::{Config, SecretString};
use df_reconciler_core::preflight;
use df_reconciler_core::sql::Schemas;
use df_reconciler_testkit::fixture;
use df_reconciler_testkit::throwaway::ThrowawayCluster;
use tokio_postgres::{Client, NoTls};

/// The database holding both schemas and the seed functions, and no rows: every seeded
/// database starts as a copy of it.
pub const BASE_DB: &str = "bench_base";

/// Parameters of `df_fixture.backlog`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Seed {
    pub n: u32,
    pub expired_fraction: f64,
    pub orphan_fraction: f64,
    pub children_every: i32,
    /// Keep backlog()'s unsettled rows (df terminal and expired, engine root still
    /// Running: eligible, examined and skipped by every pass). False turns them into
    /// running df rows, so that nothing at all is eligible.
    pub unsettled: bool,
}

impl Seed {
    /// The realistic mix: `backlog(n)` with its defaults (90% of the non-orphans expired,
    /// 5% orphans, a child every 10th root).
    pub fn realistic(n: u32) -> Self {
        Seed {
            n,
            expired_fraction: 0.9,
            orphan_fraction: 0.05,
            children_every: 10,
            unsettled: true,
        }
    }

    /// Nothing expired, no orphan: young terminal, running, unsettled and pending roots.
    pub fn live(n: u32) -> Self {
        Seed {
            n,
            expired_fraction: 0.0,
            orphan_fraction: 0.0,
            children_every: 10,
            unsettled: true,
        }
    }

    /// [`Seed::live`] without the unsettled rows: nothing is eligible.
    pub fn idle(n: u32) -> Self {
        Seed {
            unsettled: false,
            ..Seed::live(n)
        }
    }

    pub fn db_name(&self) -> String {
        let kind = if self.expired_fraction == 0.0 && self.orphan_fraction == 0.0 {
            if self.unsettled {
                "live"
            } else {
                "idle"
            }
        } else {
            "mix"
        };
        format!("seed_{kind}_{}", self.n)
    }
}

pub struct Server {
    cluster: ThrowawayCluster,
    /// Seeded databases get the daemon's supporting indexes (`migrate --indexes`).
    indexes: bool,
}

impl Server {
    /// Starts the cluster (blocking; call before entering the runtime).
    pub fn start(indexes: bool) -> Result<Self> {
        let cluster = ThrowawayCluster::start().context("starting the throwaway PostgreSQL")?;
        Ok(Server { cluster, indexes })
    }

    pub fn dsn(&self, db: &str) -> String {
        self.cluster.dsn(db)
    }

    /// The postmaster's process id, whose children are the server's backends.
    pub fn postmaster_pid(&self) -> Option<u32> {
        self.cluster.postmaster_pid()
    }

    /// The daemon's default configuration, pointed at `db`.
    pub fn config(&self, db: &str) -> Config {
        let mut cfg = Config::default();
        cfg.database.url = Some(SecretString::new(self.dsn(db)));
        cfg.http.listen = String::new();
        cfg
    }

    pub async fn connect(&self, db: &str) -> Result<Client> {
        let (client, connection) = tokio_postgres::connect(&self.dsn(db), NoTls)
            .await
            .with_context(|| format!("connecting to database {db}"))?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    async fn admin(&self, sql: &str) -> Result<()> {
        let client = self.connect("postgres").await?;
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("running `{sql}`"))?;
        Ok(())
    }

    /// Waits until no session is connected to `db` (a dropped client's backend exits
    /// asynchronously), so it can serve as a template or be dropped.
    async fn wait_unused(&self, db: &str) -> Result<()> {
        let client = self.connect("postgres").await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let n: i64 = client
                .query_one(
                    // Autovacuum workers do not count: CREATE and DROP DATABASE stop them.
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE datname = $1 AND backend_type = 'client backend'",
                    &[&db],
                )
                .await?
                .get(0);
            if n == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("database {db} still has {n} sessions");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// `CREATE DATABASE to TEMPLATE from` (file copy: a checkpoint and a copy of the
    /// files, much faster than WAL-logging every block of a large database).
    pub async fn copy_db(&self, from: &str, to: &str) -> Result<Duration> {
        let started = Instant::now();
        self.wait_unused(from).await?;
        self.admin(&format!("DROP DATABASE IF EXISTS {to}")).await?;
        self.admin(&format!(
            "CREATE DATABASE {to} TEMPLATE {from} STRATEGY = FILE_COPY"
        ))
        .await?;
        Ok(started.elapsed())
    }

    pub async fn drop_db(&self, db: &str) -> Result<()> {
        self.wait_unused(db).await?;
        self.admin(&format!("DROP DATABASE IF EXISTS {db} WITH (FORCE)"))
            .await
    }

    /// Creates the empty base database with both schemas and the seed functions.
    pub async fn create_base(&self) -> Result<()> {
        self.admin(&format!("CREATE DATABASE {BASE_DB}")).await?;
        let client = self.connect(BASE_DB).await?;
        client
            .batch_execute(fixture::SCHEMA_SQL)
            .await
            .context("loading fixture::SCHEMA_SQL")?;
        client
            .batch_execute(fixture::SEED_FUNCTIONS_SQL)
            .await
            .context("loading fixture::SEED_FUNCTIONS_SQL")?;
        Ok(())
    }

    /// A database seeded with `seed` and vacuumed, named [`Seed::db_name`]; reused when it
    /// exists. Returns the seeding time (zero when reused).
    pub async fn seeded(&self, seed: Seed) -> Result<(String, Duration)> {
        let name = seed.db_name();
        let admin = self.connect("postgres").await?;
        let exists = admin
            .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
            .await?
            .is_some();
        drop(admin);
        if exists {
            return Ok((name, Duration::ZERO));
        }
        let started = Instant::now();
        self.copy_db(BASE_DB, &name).await?;
        let client = self.connect(&name).await?;
        client
            .execute(
                "SELECT df_fixture.backlog($1, $2, $3, $4, 0)",
                &[
                    &(seed.n as i32),
                    &seed.expired_fraction,
                    &seed.orphan_fraction,
                    &seed.children_every,
                ],
            )
            .await
            .with_context(|| format!("seeding {name}"))?;
        if !seed.unsettled {
            client.batch_execute(SETTLE_UNSETTLED).await?;
        }
        if self.indexes {
            let schemas = Schemas::new("df", "_duroxide");
            preflight::create_supporting_indexes(&client, &schemas).await?;
        }
        client.batch_execute("VACUUM ANALYZE").await?;
        Ok((name, started.elapsed()))
    }

    /// A fresh copy of `template`, vacuumed and analyzed like a database at rest.
    pub async fn fresh_copy(&self, template: &str, name: &str) -> Result<()> {
        self.copy_db(template, name).await?;
        let client = self.connect(name).await?;
        client.batch_execute("VACUUM ANALYZE").await?;
        Ok(())
    }
}

/// Turns df rows that are terminal while their engine root runs into running df rows.
const SETTLE_UNSETTLED: &str = "
    UPDATE df.instances d SET status = 'running', completed_at = NULL
    FROM _duroxide.instances ei
    JOIN _duroxide.executions ex
      ON ex.instance_id = ei.instance_id AND ex.execution_id = ei.current_execution_id
    WHERE ei.instance_id = d.id::text
      AND d.status IN ('completed', 'failed', 'cancelled')
      AND ex.status = 'Running'";

/// Rows per table of a seeded database, for the record.
pub async fn table_sizes(client: &Client) -> Result<Vec<(String, i64)>> {
    let mut out = Vec::new();
    for table in [
        "df.instances",
        "df.nodes",
        "_duroxide.instances",
        "_duroxide.executions",
        "_duroxide.history",
        "_duroxide.orchestrator_queue",
        "_duroxide.worker_queue",
        "_duroxide.kv_store",
        "_duroxide.kv_delta",
    ] {
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {table}"), &[])
            .await?
            .get(0);
        out.push((table.to_owned(), n));
    }
    Ok(out)
}

pub async fn database_size(client: &Client) -> Result<i64> {
    Ok(client
        .query_one("SELECT pg_database_size(current_database())", &[])
        .await?
        .get(0))
}
