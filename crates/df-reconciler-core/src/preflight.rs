//! Engine-schema discovery and the fail-closed checks that run before every pass.
//!
//! A pass starts only when every check passes: both schemas and all their tables exist,
//! the role may read (and, for a real pass, delete) every per-instance table, it sees every
//! df row despite row-level security, and the engine has no per-instance table the daemon
//! does not know. Anything else is a [`crate::error::Error::Refused`] naming each problem.

use tokio_postgres::GenericClient;

use std::time::{Duration, SystemTime};

use crate::config::Config;
use crate::db::Exec;
use crate::error::{DbContext, Error};
use crate::report::OrphanHold;
use crate::sql::{self, control, engine, reconcile, Schemas, SupportingIndex};

/// The engine schema name when `df.duroxide_schema()` does not exist (pg_durable <= 0.2.2).
pub(crate) const LEGACY_ENGINE_SCHEMA: &str = "duroxide";

/// What preflight established about the database.
#[derive(Debug, Clone)]
pub struct Verified {
    /// The control and engine schemas the checks ran against; a pass uses these.
    pub schemas: Schemas,
    /// Highest applied engine migration, when readable.
    pub engine_migration: Option<i64>,
    /// Problems that do not stop a pass (unknown engine version, ...). What the
    /// open-transaction guard can see is [`orphan_guard`]'s business.
    pub warnings: Vec<String>,
}

/// What the caller is about to do; a dry run needs no DELETE privilege.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Count only: SELECT on every table suffices.
    DryRun,
    /// A real pass: also DELETE on every per-instance table, and the column UPDATE that
    /// `FOR UPDATE SKIP LOCKED` needs on both `instances` tables.
    Delete,
}

/// Resolves `schemas.engine = "auto"` by asking pg_durable.
pub async fn resolve_engine_schema(
    client: &impl GenericClient,
    cfg: &Config,
) -> Result<String, Error> {
    if cfg.schemas.engine != "auto" {
        return Ok(cfg.schemas.engine.clone());
    }
    let control = &cfg.schemas.control;
    // Calling the function needs USAGE on its schema: without it, say so (exit 3) instead
    // of failing on "permission denied" (a fresh install grants PUBLIC nothing there).
    let usage: bool = client
        .fetch_one(control::USAGE_OR_NO_SCHEMA, &[control])
        .await
        .context("checking USAGE on the control schema")?
        .get(0);
    if !usage {
        return Err(Error::Refused(vec![format!(
            "role lacks USAGE on schema {control} (GRANT USAGE ON SCHEMA {control})"
        )]));
    }
    let has_function: bool = client
        .fetch_one(control::HAS_ENGINE_SCHEMA_FUNCTION, &[control])
        .await
        .context("looking for df.duroxide_schema()")?
        .get(0);
    if !has_function {
        return Ok(LEGACY_ENGINE_SCHEMA.to_owned());
    }
    let sql = Schemas::new(control, "").render(control::ENGINE_SCHEMA_FUNCTION);
    let name: Option<String> = client
        .fetch_one(&sql, &[])
        .await
        .context("calling duroxide_schema()")?
        .get(0);
    Ok(name.unwrap_or_else(|| LEGACY_ENGINE_SCHEMA.to_owned()))
}

/// Runs every check and returns the verified schemas, or every problem found.
pub async fn verify(
    client: &impl GenericClient,
    cfg: &Config,
    intent: Intent,
) -> Result<Verified, Error> {
    let mut problems = Vec::new();
    let mut warnings = Vec::new();
    let control_name = cfg.schemas.control.clone();
    let control_exists = schema_exists(client, &control_name).await?;
    if !control_exists {
        problems.push(format!(
            "control schema {control_name:?} does not exist (is pg_durable installed in this database? see schemas.control)"
        ));
    }
    let engine_name = if control_exists || cfg.schemas.engine != "auto" {
        resolve_engine_schema(client, cfg).await?
    } else {
        LEGACY_ENGINE_SCHEMA.to_owned()
    };
    let engine_exists = schema_exists(client, &engine_name).await?;
    if !engine_exists {
        problems.push(format!(
            "engine schema {engine_name:?} does not exist (see schemas.engine)"
        ));
    }
    let schemas = Schemas::new(&control_name, &engine_name);

    if control_exists {
        check_tables(
            client,
            &control_name,
            &control::REQUIRED_TABLES,
            &mut problems,
        )
        .await?;
    }
    if engine_exists {
        check_tables(
            client,
            &engine_name,
            &engine::REQUIRED_TABLES,
            &mut problems,
        )
        .await?;
    }
    let existing = [
        (&control_name, control_exists),
        (&engine_name, engine_exists),
    ];
    for schema in existing
        .iter()
        .filter(|(_, exists)| *exists)
        .map(|(s, _)| *s)
    {
        let usage: bool = client
            .fetch_one(
                "SELECT pg_catalog.has_schema_privilege($1::text, 'USAGE'::text)",
                &[schema],
            )
            .await
            .context("checking schema privileges")?
            .get(0);
        if !usage {
            problems.push(format!(
                "role lacks USAGE on schema {schema} (GRANT USAGE ON SCHEMA {schema})"
            ));
        }
    }
    if !problems.is_empty() {
        return Err(Error::Refused(problems));
    }

    check_unknown_per_instance_tables(client, &schemas, &mut problems).await?;
    // One privilege per call: has_table_privilege('SELECT, DELETE') is true if ANY is held.
    let privileges: &[&str] = match intent {
        Intent::DryRun => &["SELECT"],
        Intent::Delete => &["SELECT", "DELETE"],
    };
    for (schema, table) in schemas.per_instance_tables() {
        let qualified = format!("{}.{}", sql::quote_ident(schema), sql::quote_ident(table));
        for privilege in privileges {
            let granted: bool = client
                .fetch_one(
                    "SELECT pg_catalog.has_table_privilege($1::text, $2::text)",
                    &[&qualified, privilege],
                )
                .await
                .context("checking table privileges")?
                .get(0);
            if !granted {
                problems.push(format!(
                    "role lacks {privilege} on {schema}.{table} (GRANT {privilege} ON {schema}.{table})"
                ));
            }
        }
    }
    if intent == Intent::Delete {
        // FOR UPDATE SKIP LOCKED, which keeps the daemon from ever waiting on the engine,
        // needs UPDATE on at least one column of each locked table. No row is ever updated.
        for (schema, table, column) in [
            (&schemas.control, "instances", "id"),
            (&schemas.engine, "instances", "instance_id"),
        ] {
            let qualified = format!("{}.{}", sql::quote_ident(schema), sql::quote_ident(table));
            let granted: bool = client
                .fetch_one(
                    "SELECT pg_catalog.has_any_column_privilege($1::text, 'UPDATE'::text)",
                    &[&qualified],
                )
                .await
                .context("checking lock privileges")?
                .get(0);
            if !granted {
                problems.push(format!(
                    "role lacks UPDATE on a column of {schema}.{table}, which SELECT ... FOR UPDATE SKIP LOCKED needs (GRANT UPDATE ({column}) ON {schema}.{table}; no row is ever updated)"
                ));
            }
        }
    }
    for table in control::REQUIRED_TABLES {
        let exempt: bool = client
            .fetch_one(control::RLS_EXEMPTION, &[&control_name, &table])
            .await
            .context("checking row-level security")?
            .get(0);
        if !exempt {
            problems.push(format!(
                "role is subject to row-level security on {control_name}.{table}: it would see only its own rows and take every other engine record for an orphan; connect as a role with BYPASSRLS (or the table owner)"
            ));
        }
    }

    let migrations = format!("{}._duroxide_migrations", sql::quote_ident(&schemas.engine));
    let can_read_migrations: bool = client
        .fetch_one(
            "SELECT pg_catalog.has_table_privilege($1::text, 'SELECT'::text)",
            &[&migrations],
        )
        .await
        .context("checking table privileges")?
        .get(0);
    let engine_migration = if can_read_migrations {
        check_engine_version(client, &schemas, &mut warnings).await?
    } else {
        warnings.push(format!(
            "role lacks SELECT on {}._duroxide_migrations: the engine version cannot be checked",
            schemas.engine
        ));
        None
    };
    // A rule whose role does not exist would match nothing: its instances would fall
    // under the rules after it, typically shorter ones.
    let rules = crate::rules::RuleSet::new(&cfg.retention);
    if !rules.rules().is_empty() {
        let oids: Vec<Option<u32>> = client
            .fetch_all(crate::sql::reconcile::RULE_ROLES, &[&rules.role_names()])
            .await
            .context("resolving the rules' roles")?
            .iter()
            .map(|r| r.get(0))
            .collect();
        problems.extend(crate::pass::missing_roles(&rules, &oids));
    }
    if !problems.is_empty() {
        return Err(Error::Refused(problems));
    }
    Ok(Verified {
        schemas,
        engine_migration,
        warnings,
    })
}

async fn schema_exists(client: &impl GenericClient, name: &str) -> Result<bool, Error> {
    Ok(client
        .fetch_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_namespace WHERE nspname = $1::text)",
            &[&name],
        )
        .await
        .context("looking up schemas")?
        .get(0))
}

async fn check_tables(
    client: &impl GenericClient,
    schema: &str,
    required: &[&str],
    problems: &mut Vec<String>,
) -> Result<(), Error> {
    let present: Vec<String> = client
        .fetch_all(
            "SELECT c.relname::text
             FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
             WHERE n.nspname = $1::text AND c.relkind IN ('r'::\"char\", 'p'::\"char\")",
            &[&schema],
        )
        .await
        .context("listing tables")?
        .iter()
        .map(|r| r.get(0))
        .collect();
    for table in required {
        if !present.iter().any(|p| p == table) {
            problems.push(format!("table {schema}.{table} does not exist"));
        }
    }
    Ok(())
}

/// A per-instance table the daemon does not delete from would keep rows of deleted
/// instances forever: refuse instead (fail closed).
async fn check_unknown_per_instance_tables(
    client: &impl GenericClient,
    schemas: &Schemas,
    problems: &mut Vec<String>,
) -> Result<(), Error> {
    let rows = client
        .fetch_all(engine::TABLES_WITH_INSTANCE_ID, &[&schemas.engine])
        .await
        .context("listing engine tables")?;
    for row in rows {
        let table: String = row.get(0);
        if !engine::PER_INSTANCE_TABLES.iter().any(|t| t.name == table) {
            problems.push(format!(
                "engine table {}.{table} has an instance_id column this version of df-reconciler does not know; deleting instances would leave its rows behind (upgrade df-reconciler)",
                schemas.engine
            ));
        }
    }
    Ok(())
}

async fn check_engine_version(
    client: &impl GenericClient,
    schemas: &Schemas,
    warnings: &mut Vec<String>,
) -> Result<Option<i64>, Error> {
    let rows = client
        .fetch_all(&schemas.render(engine::MIGRATION_VERSIONS), &[])
        .await
        .context("reading engine migrations")?;
    let versions: Vec<i64> = rows
        .iter()
        .filter_map(|r| r.get::<_, Option<String>>(0)?.trim().parse().ok())
        .collect();
    let highest = versions.iter().copied().max();
    match highest {
        Some(v) if engine::KNOWN_MIGRATION_VERSIONS.contains(&v) => {}
        Some(v) => warnings.push(format!(
            "engine migration version {v} is newer than the versions df-reconciler knows (up to {}); verify the release notes",
            engine::KNOWN_MIGRATION_VERSIONS.end()
        )),
        None => warnings.push("engine migrations table is empty or unreadable".into()),
    }
    Ok(highest)
}

/// What the oldest-open-transaction guard can see. Orphans may only be reclaimed when it
/// sees every transaction that may still commit a df row for an engine record; otherwise
/// a pass reclaims none (its expired phase still runs) and says why ([`OrphanGuard::holds`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrphanGuard {
    /// The role uses pg_read_all_stats's privileges (or is a superuser), so
    /// pg_stat_activity shows it every session's transaction start.
    pub sees_all_sessions: bool,
    /// Other sessions of this database whose transaction start is hidden all the same (a
    /// row shown without details, or `track_activities = off`).
    pub hidden_sessions: u64,
    /// Prepared transactions in this database (pg_prepared_xacts).
    pub prepared_transactions: u64,
}

impl OrphanGuard {
    /// A guard that sees everything: orphans may be reclaimed.
    pub const CLEAR: OrphanGuard = OrphanGuard {
        sees_all_sessions: true,
        hidden_sessions: 0,
        prepared_transactions: 0,
    };

    /// Why no orphan may be reclaimed now; empty when orphans may be reclaimed.
    ///
    /// - Without pg_read_all_stats other roles' sessions hide their `xact_start`: an open
    ///   `df.start()` of theirs would be invisible ([`OrphanHold::NoStatsPrivilege`]).
    /// - With it, a session may still hide its transaction start
    ///   ([`OrphanHold::HiddenSessions`]; not reported on top of the missing privilege).
    /// - A prepared transaction's start is unknown: pg_prepared_xacts has only its PREPARE
    ///   time, and an engine record created between a `df.start()` inside it and the
    ///   PREPARE would pass for an orphan under any cutoff taken from that time
    ///   ([`OrphanHold::PreparedTransactions`]). While one exists, nothing is reclaimed.
    pub fn holds(&self) -> Vec<OrphanHold> {
        let mut holds = Vec::new();
        if !self.sees_all_sessions {
            holds.push(OrphanHold::NoStatsPrivilege);
        } else if self.hidden_sessions > 0 {
            holds.push(OrphanHold::HiddenSessions);
        }
        if self.prepared_transactions > 0 {
            holds.push(OrphanHold::PreparedTransactions);
        }
        holds
    }

    /// One line per hold, for a pass's `warnings` and for `check`.
    pub fn warnings(&self) -> Vec<String> {
        self.holds()
            .into_iter()
            .map(|hold| match hold {
                OrphanHold::NoStatsPrivilege => "role cannot see other sessions' transactions (it does not hold pg_read_all_stats with INHERIT, nor is it a superuser): the open-transaction guard would be blind, so no orphan engine tree is reclaimed (expired instances still are); GRANT pg_read_all_stats TO the role".to_owned(),
                OrphanHold::HiddenSessions => format!(
                    "{} session(s) of this database hide their transaction start from the role (track_activities = off?): the open-transaction guard would be blind, so no orphan engine tree is reclaimed this pass (expired instances still are)",
                    self.hidden_sessions
                ),
                OrphanHold::PreparedTransactions => format!(
                    "{} prepared transaction(s) in this database (pg_prepared_xacts): a df.start() inside one may own an engine record created before its PREPARE, so no orphan engine tree is reclaimed until they are committed or rolled back (COMMIT PREPARED / ROLLBACK PREPARED; expired instances still are)",
                    self.prepared_transactions
                ),
            })
            .collect()
    }
}

/// Reads what the open-transaction guard can see (see [`OrphanGuard`]). A pass reads it in
/// its clock transaction, right after the oldest open transaction; `check` on its own.
pub async fn orphan_guard(client: &impl GenericClient) -> Result<OrphanGuard, Error> {
    let row = client
        .fetch_one(reconcile::ORPHAN_GUARD, &[])
        .await
        .context("checking what the open-transaction guard can see")?;
    let count = |i: usize| u64::try_from(row.get::<_, i64>(i)).unwrap_or(0);
    Ok(OrphanGuard {
        sees_all_sessions: row.get(0),
        hidden_sessions: count(1),
        prepared_transactions: count(2),
    })
}

/// Drift "df live, engine ended" for `check`: live df rows whose engine root ended more
/// than `orphan_min_age` ago (by the database clock), e.g. left by a rolled-back
/// `df.cancel()`. A warning, never a problem: the daemon never deletes them.
pub async fn df_live_engine_ended_warning(
    client: &impl GenericClient,
    schemas: &Schemas,
    orphan_min_age: Duration,
) -> Result<Option<String>, Error> {
    let db_now: SystemTime = client
        .fetch_one("SELECT pg_catalog.now()", &[])
        .await
        .context("reading the database clock")?
        .get(0);
    let Some(cutoff) = db_now.checked_sub(orphan_min_age) else {
        return Ok(None);
    };
    let n: i64 = client
        .fetch_one(&schemas.render(reconcile::DF_LIVE_ENGINE_ENDED), &[&cutoff])
        .await
        .context("counting live df rows whose engine root ended")?
        .get(0);
    Ok((n > 0).then(|| {
        format!(
            "{n} live df row(s) (pending/running) whose engine root ended (Completed or Failed) more than {} ago: drift \"df live, engine ended\", e.g. a rolled-back df.cancel(); never deleted: see docs/OPERATIONS.md, \"Reading the report\"",
            humantime::format_duration(orphan_min_age)
        )
    }))
}

/// Warns when pg_durable's own reconcile is still enabled next to the daemon.
pub async fn in_database_reconcile_warning(
    client: &impl GenericClient,
) -> Result<Option<String>, Error> {
    let value: Option<String> = client
        .fetch_one(control::IN_DATABASE_RECONCILE_INTERVAL, &[])
        .await
        .context("reading pg_durable.reconcile_interval")?
        .get(0);
    Ok(match value.as_deref().map(str::trim) {
        None | Some("") | Some("0") | Some("0s") | Some("0ms") => None,
        Some(v) => Some(format!(
            "pg_durable.reconcile_interval = {v}: the in-database reconcile still runs; set it to 0 (ALTER SYSTEM SET pg_durable.reconcile_interval = 0)"
        )),
    })
}

/// One warning per schema on the role's default search path that other roles may create
/// objects in (see [`sql::SCHEMA_CREATORS`]): a function or operator planted there would
/// run as the role in any session that does not pin its search path. The daemon pins its
/// own and qualifies every name, so this is about everything else that logs in as the
/// role (psql sessions of an operator, scripts, a pooler's server connections).
pub async fn writable_search_path_warnings(
    client: &impl GenericClient,
) -> Result<Vec<String>, Error> {
    let row = client
        .fetch_one(sql::DEFAULT_SEARCH_PATH, &[])
        .await
        .context("reading the role's default search path")?;
    let path: String = row.get(0);
    let role: String = row.get(1);
    let schemas = search_path_schemas(&path, &role);
    let rows = client
        .fetch_all(sql::SCHEMA_CREATORS, &[&schemas])
        .await
        .context("looking for schemas on the search path that other roles may write")?;
    let mut warnings = Vec::new();
    for row in rows {
        let schema: String = row.get(0);
        let creators: Vec<String> = row.get(1);
        let public_create: bool = row.get(2);
        if creators.is_empty() && !public_create {
            continue;
        }
        let who = if public_create {
            "every role (CREATE is granted to PUBLIC)".to_owned()
        } else if creators.len() > 5 {
            format!(
                "{} and {} more",
                creators[..5].join(", "),
                creators.len() - 5
            )
        } else {
            creators.join(", ")
        };
        let revoke = if public_create {
            format!("REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC")
        } else {
            format!("REVOKE CREATE ON SCHEMA {schema} FROM those roles")
        };
        warnings.push(format!(
            "schema {schema} on the role's default search path ({path}) is writable by other roles: {who}; a function or operator created there runs as {role} in every session of it that does not pin its search path (df-reconciler pins its own: pg_catalog, pg_temp); {revoke}, or take it off the role's path: ALTER ROLE {role} SET search_path = pg_catalog, pg_temp (deploy/sql/reconciler-role.sql does)"
        ));
    }
    Ok(warnings)
}

/// The schema names of a `search_path` value, in order: quoted names as written, unquoted
/// ones folded to lower case, `$user` as the role's name.
fn search_path_schemas(path: &str, role: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut current = String::new();
    let mut quoted = false;
    let mut was_quoted = false;
    let mut chars = path.chars().peekable();
    let mut finish = |current: &mut String, was_quoted: &mut bool| {
        let raw = std::mem::take(current);
        let name = if *was_quoted {
            raw
        } else {
            raw.trim().to_lowercase()
        };
        *was_quoted = false;
        if name == "$user" {
            names.push(role.to_owned());
        } else if !name.is_empty() {
            names.push(name);
        }
    };
    while let Some(c) = chars.next() {
        match c {
            '"' if quoted && chars.peek() == Some(&'"') => {
                chars.next();
                current.push('"');
            }
            '"' => {
                quoted = !quoted;
                if quoted {
                    current.clear();
                    was_quoted = true;
                }
            }
            ',' if !quoted => finish(&mut current, &mut was_quoted),
            c if quoted => current.push(c),
            c if was_quoted && c.is_whitespace() => {}
            c => current.push(c),
        }
    }
    finish(&mut current, &mut was_quoted);
    names
}

/// Supporting indexes that are missing (see `SupportingIndex::all`).
pub async fn missing_supporting_indexes(
    client: &impl GenericClient,
    schemas: &Schemas,
) -> Result<Vec<SupportingIndex>, Error> {
    let mut missing = Vec::new();
    for index in SupportingIndex::all() {
        let columns: Vec<&str> = index.columns.to_vec();
        let plain = index.include.is_empty() && index.predicate.is_empty();
        let present: bool = client
            .fetch_one(
                sql::HAS_SUPPORTING_INDEX,
                &[
                    &index.schema(schemas),
                    &index.table,
                    &columns,
                    &index.name,
                    &plain,
                ],
            )
            .await
            .context("looking for supporting indexes")?
            .get(0);
        if !present {
            missing.push(index);
        }
    }
    Ok(missing)
}

/// Creates the missing supporting indexes with `CREATE INDEX CONCURRENTLY` (no write lock
/// on the tables; outside any transaction; needs each table's owner). An invalid leftover
/// of an interrupted build is dropped first. Returns the names created.
pub async fn create_supporting_indexes(
    client: &impl GenericClient,
    schemas: &Schemas,
) -> Result<Vec<&'static str>, Error> {
    let mut created = Vec::new();
    for index in missing_supporting_indexes(client, schemas).await? {
        let qualified = format!(
            "{}.{}",
            sql::quote_ident(index.schema(schemas)),
            sql::quote_ident(index.name)
        );
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {qualified}"))
            .await
            .with_context(|| format!("dropping an invalid leftover of {qualified}"))?;
        client
            .batch_execute(&index.create_statement(schemas))
            .await
            .with_context(|| format!("creating index {qualified}"))?;
        created.push(index.name);
    }
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn search_path_values_name_their_schemas() {
        assert_eq!(
            search_path_schemas("\"$user\", public", "df_reconciler"),
            ["df_reconciler", "public"]
        );
        assert_eq!(
            search_path_schemas(" App ,\"We,ird\"\"s\" , pg_catalog, pg_temp", "r"),
            ["app", "We,ird\"s", "pg_catalog", "pg_temp"]
        );
        assert_eq!(search_path_schemas("$user", "r"), ["r"]);
        assert!(search_path_schemas("", "r").is_empty());
    }

    #[test]
    fn the_guard_holds_orphans_whenever_it_cannot_see_every_transaction() {
        assert!(OrphanGuard::CLEAR.holds().is_empty());
        assert!(OrphanGuard::CLEAR.warnings().is_empty());
        let blind = OrphanGuard {
            sees_all_sessions: false,
            // Without the privilege every other role's session is hidden: one reason.
            hidden_sessions: 7,
            ..OrphanGuard::CLEAR
        };
        assert_eq!(blind.holds(), [OrphanHold::NoStatsPrivilege]);
        let hidden = OrphanGuard {
            hidden_sessions: 1,
            ..OrphanGuard::CLEAR
        };
        assert_eq!(hidden.holds(), [OrphanHold::HiddenSessions]);
        let prepared = OrphanGuard {
            sees_all_sessions: false,
            prepared_transactions: 2,
            ..OrphanGuard::CLEAR
        };
        assert_eq!(
            prepared.holds(),
            [
                OrphanHold::NoStatsPrivilege,
                OrphanHold::PreparedTransactions
            ]
        );
        let warnings = prepared.warnings();
        assert_eq!(warnings.len(), 2);
        assert!(warnings[0].contains("pg_read_all_stats") && warnings[0].contains("no orphan"));
        assert!(warnings[1].starts_with("2 prepared transaction(s)"));
    }
}
