//! Search-path hijacking (the class of CVE-2018-1058): an unprivileged role that may
//! create objects in `public` (the default of every database upgraded from PostgreSQL 14
//! or older) or in a schema on the daemon role's search path plants look-alikes of the
//! functions and operators the daemon's SQL uses, with signatures that PostgreSQL's
//! overload resolution would prefer (`text` and `varchar` where the catalog takes `name`
//! or `"any"`, a concrete array where it takes `anyarray`). A planted object runs with the
//! privileges of whoever calls it: as the daemon's role it could read every df row despite
//! RLS, or delete every workflow.
//!
//! Every planted object writes a line to the server log when called (`RAISE LOG` works
//! in read-only transactions too), tagged with its database; every subcommand that
//! touches the database runs; the test fails on any such line.

use crate::support::db::exec;
use crate::support::harness::{cluster, connect, TestDb};
use crate::support::process::{daemon, first_pass_of_run, run, text};
use crate::support::role::{apply_role_sql, dsn_as};
use crate::support::seed::{orphan, workflow, DAY};

/// The tag of every planted object's log line; the database name follows it.
const PROBE: &str = "search-path-probe";

/// Functions planted, as (name, arguments, result): look-alikes of what the daemon calls,
/// each with a signature that beats the catalog's for untyped literals or parameters, or
/// for `varchar` and concrete-array arguments.
const FUNCTIONS: &[(&str, &str, &str)] = &[
    ("pg_has_role", "text, text", "boolean"),
    ("pg_has_role", "varchar, varchar", "boolean"),
    ("pg_has_role", "oid, varchar", "boolean"),
    ("pg_has_role", "text, text, text", "boolean"),
    ("has_schema_privilege", "varchar, varchar", "boolean"),
    ("has_schema_privilege", "text, varchar", "boolean"),
    ("has_table_privilege", "varchar, varchar", "boolean"),
    ("has_table_privilege", "text, varchar", "boolean"),
    ("has_any_column_privilege", "varchar, varchar", "boolean"),
    ("has_any_column_privilege", "text, varchar", "boolean"),
    ("current_setting", "varchar, boolean", "text"),
    ("current_setting", "varchar", "text"),
    ("set_config", "varchar, varchar, boolean", "text"),
    ("split_part", "varchar, text, integer", "text"),
    ("split_part", "varchar, varchar, integer", "text"),
    ("strpos", "varchar, text", "integer"),
    ("strpos", "varchar, varchar", "integer"),
    ("starts_with", "varchar, text", "boolean"),
    ("starts_with", "varchar, varchar", "boolean"),
    ("length", "varchar", "integer"),
    ("lower", "varchar", "text"),
    ("format", "text, text", "text"),
    ("format", "text, varchar", "text"),
    ("to_regclass", "varchar", "regclass"),
    ("unnest", "text[]", "SETOF text"),
    ("cardinality", "text[]", "integer"),
    ("pg_try_advisory_xact_lock", "text", "boolean"),
    ("pg_try_advisory_lock", "text", "boolean"),
    ("pg_advisory_xact_lock", "text", "void"),
    ("make_interval", "secs text", "interval"),
    ("make_interval", "secs double precision", "interval"),
    ("date_part", "varchar, timestamptz", "double precision"),
];

/// Operators planted for every pair of [`OPERAND_TYPES`]: comparisons, LIKE (`~~`) and
/// regular-expression match (`~`).
const OPERATORS: &[&str] = &["=", "<>", "<", "<=", ">", ">=", "~~", "~"];
const OPERAND_TYPES: &[&str] = &[
    "text",
    "varchar",
    "name",
    "\"char\"",
    "bigint",
    "timestamptz",
    "text[]",
];

/// The planting, as the hostile role, in `schema`.
fn plant(schema: &str) -> String {
    let mut sql = String::new();
    let body = |what: &str, returns: &str| {
        let ret = if returns.starts_with("SETOF") || returns == "void" {
            "RETURN;"
        } else {
            "RETURN NULL;"
        };
        format!(
            "$probe$ BEGIN
               RAISE LOG '{PROBE} % called {schema}.{what} as %',
                   pg_catalog.current_database(), CURRENT_USER;
               {ret}
             END $probe$"
        )
    };
    for (name, args, returns) in FUNCTIONS {
        let what = format!("{name}({args})");
        sql.push_str(&format!(
            "CREATE FUNCTION {schema}.{name}({args}) RETURNS {returns} LANGUAGE plpgsql AS {};\n",
            body(&what, returns)
        ));
    }
    // array_agg(text) beats the catalog's array_agg(anynonarray) for a text argument.
    sql.push_str(&format!(
        "CREATE FUNCTION {schema}.probe_agg(text[], text) RETURNS text[] LANGUAGE plpgsql AS {};
         CREATE AGGREGATE {schema}.array_agg(text) (SFUNC = {schema}.probe_agg, STYPE = text[]);\n",
        body("array_agg(text)", "text[]")
    ));
    for left in OPERAND_TYPES {
        for right in OPERAND_TYPES {
            let what = format!("operator({left}, {right})");
            sql.push_str(&format!(
                "CREATE FUNCTION {schema}.probe_op({left}, {right}) RETURNS boolean LANGUAGE plpgsql AS {};\n",
                body(&what, "boolean")
            ));
            for op in OPERATORS {
                sql.push_str(&format!(
                    "CREATE OPERATOR {schema}.{op} (LEFTARG = {left}, RIGHTARG = {right}, FUNCTION = {schema}.probe_op);\n"
                ));
            }
        }
    }
    sql
}

/// Lines of the shared cluster's log written by a planted object of `db`.
fn probe_calls(db: &TestDb) -> Vec<String> {
    let log = std::fs::read(cluster().log_path()).expect("the server log");
    let tag = format!("{PROBE} {} called", db.name);
    String::from_utf8_lossy(&log)
        .lines()
        .filter(|line| line.contains(&tag))
        .map(str::to_owned)
        .collect()
}

/// One subcommand of the binary, as `dsn`'s role, and how it ended.
async fn subcommand(dsn: &str, args: &[&str]) -> String {
    let mut cmd = daemon(dsn);
    cmd.args(args)
        .env("DF_RECONCILER__AUDIT__RECORD_DELETIONS", "true");
    let out = run(cmd).await;
    format!(
        "{args:?}: {} {}",
        out.status,
        text(&out.stderr).lines().last().unwrap_or("")
    )
}

#[tokio::test]
async fn no_planted_function_or_operator_ever_runs_as_the_daemon() {
    let db = TestDb::new().await;
    let c = db.client().await;
    workflow(
        &c,
        "17000001",
        "completed",
        Some("Completed"),
        60.0 * DAY,
        Some(60.0 * DAY),
        1,
    )
    .await;
    workflow(
        &c,
        "17000002",
        "failed",
        Some("Failed"),
        60.0 * DAY,
        None,
        0,
    )
    .await;
    workflow(&c, "17000003", "running", Some("Running"), DAY, None, 0).await;
    orphan(&c, "17000004", "Completed", 60.0 * DAY, 60.0 * DAY, 1).await;
    let role = format!("{}_rec", db.name);
    apply_role_sql(&c, &role, "_duroxide").await;

    // The hostile role: CREATE on public (the pre-15 default, granted here), and a schema
    // of its own on the search path of the daemon's role and of the tables' owner (who
    // runs `migrate --indexes`).
    let mallory = format!("{}_mallory", db.name);
    exec(
        &c,
        &format!(
            "CREATE ROLE {mallory} LOGIN;
             GRANT CREATE ON SCHEMA public TO PUBLIC;
             CREATE SCHEMA app AUTHORIZATION {mallory};
             GRANT USAGE ON SCHEMA app TO PUBLIC;
             ALTER ROLE {role} IN DATABASE {db} SET search_path = \"$user\", app, public;
             ALTER ROLE postgres IN DATABASE {db} SET search_path = \"$user\", app, public;
             SET ROLE {mallory};
             {public}
             {app}
             RESET ROLE;",
            db = db.name,
            public = plant("public"),
            app = plant("app"),
        ),
    )
    .await;
    // The planting works: a call that resolves to it leaves its line in the log.
    let bystander = connect(&db.dsn).await;
    exec(&bystander, "SELECT public.length('x'::varchar)").await;
    assert_eq!(probe_calls(&db).len(), 1, "the probe logs its calls");

    let as_role = dsn_as(&db.dsn, &role);
    let mut ran = Vec::new();
    for args in [
        &["check"][..],
        &["once", "--dry-run", "--json"],
        &["explain", "17000003"],
        &["explain", "17000004", "--json"],
        &["migrate"],
        &["once", "--json"],
        &["history"],
        &["history", "--json"],
    ] {
        ran.push(subcommand(&as_role, args).await);
    }
    ran.push(first_pass_of_run(daemon(&as_role)).await);
    // `migrate --indexes` runs as the tables' owner (here the superuser).
    ran.push(subcommand(&db.dsn, &["migrate", "--indexes"]).await);
    ran.push(subcommand(&db.dsn, &["check"]).await);
    // `check` names both schemas the hostile role may write on the role's search path.
    let mut check = daemon(&as_role);
    check.arg("check");
    let check = text(&run(check).await.stdout);

    let calls: Vec<String> = probe_calls(&db).into_iter().skip(1).collect();
    assert!(
        calls.is_empty(),
        "planted objects ran as the daemon ({} calls):\n{}\nsubcommands:\n{}",
        calls.len(),
        calls.join("\n"),
        ran.join("\n")
    );
    for outcome in &ran {
        assert!(
            outcome.contains("exit status: 0") || outcome.contains("first pass ok"),
            "{}",
            ran.join("\n")
        );
    }
    for schema in ["app", "public"] {
        let warning = format!("warning: schema {schema} on the role's default search path");
        assert!(check.contains(&warning), "{check}");
    }
    assert!(check.contains(&mallory), "{check}");
    // The pass did its work: the expired workflows and the orphan are gone.
    let left: i64 = c
        .query_one(
            "SELECT count(*) FROM df.instances WHERE id::text OPERATOR(pg_catalog.<>) '17000003'::text",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0, "{}", ran.join("\n"));
}
