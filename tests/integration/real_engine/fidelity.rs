//! The fixture's imitation of both stores (`df_reconciler_testkit::fixture::SCHEMA_SQL`,
//! the template of every other test's database) against the real extension's catalog,
//! once pg_durable's worker has created the engine store.
//!
//! Compared, as one line per fact, so that a difference reads as a diff:
//! - tables of `df` and `_duroxide`, with row-level security enabled / forced;
//! - columns: type, nullability, default expression;
//! - indexes: columns (with ordering), predicate, uniqueness, and whether a primary-key or
//!   unique constraint owns them;
//! - CHECK constraints: the columns each involves and whether it is VALID;
//! - foreign keys: columns, target, actions, match type, deferrability, validity;
//! - RLS policies: table, command, permissive or not, roles, and which of USING and WITH
//!   CHECK they carry;
//! - privileges of PUBLIC on both schemas, their tables, sequences and columns, and on
//!   `df.duroxide_schema()`; the function's arguments and result type;
//! - what `df.grant_usage(role)` gives a role on the `df` schema, its tables and columns
//!   (the column grants of df.instances decide what users can write);
//! - the engine migrations applied (count and version range) and the readiness row.
//!
//! Ignored, because the daemon cannot care about them (it never names a constraint, index
//! or policy, never calls another function, and reads no data besides the migration
//! versions):
//! - names of constraints, indexes, policies and sequences;
//! - the wording of CHECK and policy expressions (their columns and presence are compared);
//! - column order;
//! - every function other than `df.duroxide_schema()` and the behaviour of
//!   `df.grant_usage` beyond its grants: pg_durable's API (`df.start`, the DSL...), the
//!   engine's stored procedures, the imitation's `delete_instances_atomic`; the volatility
//!   and settings of `df.duroxide_schema()`; the operators and functions the extension
//!   puts in pg_catalog;
//! - comments, owners, and the names of the applied engine migrations;
//! - the contents of df._worker_epoch (the imitation has no running worker).

use std::collections::BTreeSet;

use tokio_postgres::Client;

use super::engine_or_skip;
use crate::support::harness::TestDb;

/// One line per fact about `df` and `_duroxide` (see the module docs). `probe` is a role
/// that `df.grant_usage` was called for; it is written as `probe`.
async fn catalog(c: &Client, probe: &str) -> BTreeSet<String> {
    let mut facts = BTreeSet::new();
    let queries: [(&str, &str); 12] = [
        (
            "tables",
            "SELECT format('table %s.%s rls=%s force=%s', n.nspname, c.relname,
                          c.relrowsecurity, c.relforcerowsecurity)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname IN ('df', '_duroxide') AND c.relkind IN ('r', 'p')",
        ),
        (
            "columns",
            "SELECT format('column %s.%s.%s %s%s default %s', n.nspname, c.relname, a.attname,
                          format_type(a.atttypid, a.atttypmod),
                          CASE WHEN a.attnotnull THEN ' not null' ELSE '' END,
                          coalesce(pg_get_expr(d.adbin, d.adrelid), '-'))
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
              WHERE n.nspname IN ('df', '_duroxide') AND c.relkind IN ('r', 'p')
                AND a.attnum > 0 AND NOT a.attisdropped",
        ),
        (
            "indexes",
            "SELECT format('index %s.%s %s%s%s', n.nspname, t.relname,
                          CASE WHEN x.indisunique THEN 'unique ' ELSE '' END,
                          substring(pg_get_indexdef(x.indexrelid) FROM ' USING (.*)$'),
                          CASE con.contype WHEN 'p' THEN ' (primary key)'
                                           WHEN 'u' THEN ' (unique constraint)' ELSE '' END)
               FROM pg_index x
               JOIN pg_class t ON t.oid = x.indrelid
               JOIN pg_namespace n ON n.oid = t.relnamespace
               LEFT JOIN pg_constraint con ON con.conindid = x.indexrelid
                                          AND con.contype IN ('p', 'u')
              WHERE n.nspname IN ('df', '_duroxide')",
        ),
        (
            "checks",
            "SELECT format('check %s.%s (%s)%s', n.nspname, t.relname,
                          (SELECT string_agg(a.attname, ', ' ORDER BY a.attname)
                             FROM pg_attribute a
                            WHERE a.attrelid = con.conrelid AND a.attnum = ANY (con.conkey)),
                          CASE WHEN con.convalidated THEN '' ELSE ' not valid' END)
                      || CASE WHEN count(*) OVER w > 1
                              THEN format(' #%s', row_number() OVER w) ELSE '' END
               FROM pg_constraint con
               JOIN pg_class t ON t.oid = con.conrelid
               JOIN pg_namespace n ON n.oid = t.relnamespace
              WHERE n.nspname IN ('df', '_duroxide') AND con.contype = 'c'
             WINDOW w AS (PARTITION BY con.conrelid, con.conkey, con.convalidated)",
        ),
        (
            "foreign keys",
            "SELECT format('fk %s.%s (%s) -> %s (%s) on update %s on delete %s match %s%s%s%s',
                          n.nspname, t.relname,
                          (SELECT string_agg(a.attname, ', ' ORDER BY k.i)
                             FROM unnest(con.conkey) WITH ORDINALITY k(attnum, i)
                             JOIN pg_attribute a ON a.attrelid = con.conrelid AND a.attnum = k.attnum),
                          con.confrelid::regclass,
                          (SELECT string_agg(a.attname, ', ' ORDER BY k.i)
                             FROM unnest(con.confkey) WITH ORDINALITY k(attnum, i)
                             JOIN pg_attribute a ON a.attrelid = con.confrelid AND a.attnum = k.attnum),
                          con.confupdtype, con.confdeltype, con.confmatchtype,
                          CASE WHEN con.condeferrable THEN ' deferrable' ELSE '' END,
                          CASE WHEN con.condeferred THEN ' initially deferred' ELSE '' END,
                          CASE WHEN con.convalidated THEN '' ELSE ' not valid' END)
               FROM pg_constraint con
               JOIN pg_class t ON t.oid = con.conrelid
               JOIN pg_namespace n ON n.oid = t.relnamespace
              WHERE n.nspname IN ('df', '_duroxide') AND con.contype = 'f'",
        ),
        (
            "policies",
            "SELECT format('policy %s.%s for %s %s to %s using=%s check=%s',
                          schemaname, tablename, cmd, permissive, roles,
                          qual IS NOT NULL, with_check IS NOT NULL)
               FROM pg_policies WHERE schemaname IN ('df', '_duroxide')",
        ),
        (
            "PUBLIC on schemas",
            "SELECT format('public %s on schema %s', p.privilege_type, n.nspname)
               FROM pg_namespace n,
                    aclexplode(coalesce(n.nspacl, acldefault('n', n.nspowner))) p
              WHERE n.nspname IN ('df', '_duroxide') AND p.grantee = 0",
        ),
        (
            "PUBLIC on tables and sequences",
            "SELECT format('public %s on %s %s.%s', p.privilege_type,
                          CASE c.relkind WHEN 'S' THEN 'sequence' ELSE 'table' END,
                          n.nspname, c.relname)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                    aclexplode(coalesce(c.relacl,
                        acldefault(CASE c.relkind WHEN 'S' THEN 's' ELSE 'r' END::\"char\",
                                   c.relowner))) p
              WHERE n.nspname IN ('df', '_duroxide') AND c.relkind IN ('r', 'p', 'S')
                AND p.grantee = 0",
        ),
        (
            "PUBLIC on columns",
            "SELECT format('public %s on column %s.%s.%s', p.privilege_type, n.nspname,
                          c.relname, a.attname)
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace,
                    aclexplode(a.attacl) p
              WHERE n.nspname IN ('df', '_duroxide') AND p.grantee = 0",
        ),
        (
            "df.duroxide_schema()",
            "SELECT format('function %s(%s) returns %s', p.oid::regproc,
                          pg_get_function_arguments(p.oid), p.prorettype::regtype)
               FROM pg_proc p WHERE p.oid = 'df.duroxide_schema()'::regprocedure
             UNION ALL
             SELECT format('public %s on function df.duroxide_schema()', a.privilege_type)
               FROM pg_proc p,
                    aclexplode(coalesce(p.proacl, acldefault('f', p.proowner))) a
              WHERE p.oid = 'df.duroxide_schema()'::regprocedure AND a.grantee = 0",
        ),
        (
            "engine migrations and readiness",
            "SELECT format('engine migrations count=%s versions=%s..%s', count(*), min(version),
                          max(version))
               FROM _duroxide._duroxide_migrations
             UNION ALL
             SELECT format('readiness rows=%s', count(*)) FROM _duroxide._worker_ready",
        ),
        (
            "df.grant_usage",
            "SELECT format('probe %s on schema df', p.privilege_type)
               FROM pg_namespace n, aclexplode(n.nspacl) p
              WHERE n.nspname = 'df' AND p.grantee = to_regrole($1)::oid
             UNION ALL
             SELECT format('probe %s on table %s.%s', p.privilege_type, n.nspname, c.relname)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace,
                    aclexplode(c.relacl) p
              WHERE n.nspname IN ('df', '_duroxide') AND p.grantee = to_regrole($1)::oid
             UNION ALL
             SELECT format('probe %s on column %s.%s.%s', p.privilege_type, n.nspname,
                           c.relname, a.attname)
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace,
                    aclexplode(a.attacl) p
              WHERE n.nspname IN ('df', '_duroxide') AND p.grantee = to_regrole($1)::oid",
        ),
    ];
    for (what, sql) in queries {
        let rows = if sql.contains("$1") {
            c.query(sql, &[&probe]).await
        } else {
            c.query(sql, &[]).await
        };
        for row in rows.unwrap_or_else(|e| panic!("reading the catalog ({what}): {e:?}")) {
            facts.insert(row.get::<_, String>(0));
        }
    }
    facts
}

/// A role `df.grant_usage` is called for (role names are cluster-wide); a failure is a fact
/// too (e.g. an imitation without the function), so that it shows in the diff.
async fn grant_probe(c: &Client, role: &str) -> Option<String> {
    c.batch_execute(&format!(
        "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} NOLOGIN;"
    ))
    .await
    .unwrap_or_else(|e| panic!("creating role {role}: {e:?}"));
    match c
        .batch_execute(&format!("SELECT df.grant_usage('{role}')"))
        .await
    {
        Ok(()) => None,
        Err(e) => Some(format!(
            "df.grant_usage(role) fails: {}",
            e.as_db_error()
                .map_or(e.to_string(), |db| db.message().to_owned())
        )),
    }
}

#[tokio::test]
async fn the_fixture_imitates_the_real_catalog() {
    let engine = engine_or_skip!();
    let real = engine.client().await;
    let imitation_db = TestDb::new().await;
    let imitation = imitation_db.client().await;
    let imitation_probe = format!("fidelity_probe_{}", imitation_db.name);
    let real_failure = grant_probe(&real, "fidelity_probe").await;
    let imitation_failure = grant_probe(&imitation, &imitation_probe).await;

    let mut real_facts = catalog(&real, "fidelity_probe").await;
    real_facts.extend(real_failure);
    let mut imitation_facts = catalog(&imitation, &imitation_probe).await;
    imitation_facts.extend(imitation_failure);

    let missing: Vec<&String> = real_facts.difference(&imitation_facts).collect();
    let extra: Vec<&String> = imitation_facts.difference(&real_facts).collect();
    eprintln!(
        "real_engine: fidelity: {} facts compared, {} missing from the imitation, {} only in it",
        real_facts.len(),
        missing.len(),
        extra.len()
    );
    let mut diff = String::new();
    for fact in &missing {
        diff.push_str(&format!("- {fact}   (real, missing from the imitation)\n"));
    }
    for fact in &extra {
        diff.push_str(&format!("+ {fact}   (imitation only)\n"));
    }
    assert!(
        diff.is_empty(),
        "the fixture (crates/df-reconciler-testkit/sql/fixture/schema.sql) differs from \
         pg_durable's real catalog:\n{diff}"
    );
}
