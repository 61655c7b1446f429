//! The shipped least-privileged role, `deploy/sql/reconciler-role.sql`, applied to a test
//! database as psql would apply it, and connection strings that log in as it.

use tokio_postgres::Client;

/// deploy/sql/reconciler-role.sql as plain SQL: the psql meta-commands (the variable
/// defaults) dropped and the variables substituted, as psql would.
pub fn role_sql(role: &str, engine_schema: &str) -> String {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/sql/reconciler-role.sql"
    );
    let mut sql: String = std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .lines()
        .filter(|line| !line.trim_start().starts_with('\\'))
        .map(|line| format!("{line}\n"))
        .collect();
    for (name, value) in [
        ("role", role),
        ("control_schema", "df"),
        ("engine_schema", engine_schema),
        ("audit_schema", "df_reconciler"),
    ] {
        sql = sql
            .replace(&format!(":\"{name}\""), &format!("\"{value}\""))
            .replace(&format!(":'{name}'"), &format!("'{value}'"));
    }
    assert!(
        !sql.contains(":\"") && !sql.contains(":'"),
        "a psql variable the test does not know:\n{sql}"
    );
    sql
}

/// Applies the role SQL, as the superuser session `admin`, for `role` (roles are
/// cluster-wide: name it after the test's database).
pub async fn apply_role_sql(admin: &Client, role: &str, engine_schema: &str) {
    admin
        .batch_execute(&role_sql(role, engine_schema))
        .await
        .unwrap_or_else(|e| panic!("reconciler-role.sql: {e:?}"));
}

/// `dsn` (a throwaway cluster's `postgres://postgres@...`) logging in as `role` instead.
pub fn dsn_as(dsn: &str, role: &str) -> String {
    let as_role = dsn.replacen("postgres://postgres@", &format!("postgres://{role}@"), 1);
    assert_ne!(
        as_role, dsn,
        "not a superuser DSN of a throwaway cluster: {dsn}"
    );
    as_role
}
