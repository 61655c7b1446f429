//! VACUUM hints: after a pass that emptied a table by a large share, a warning saying so.

use deadpool_postgres::Object;

use crate::db::Exec;
use crate::error::{DbContext, Error};
use crate::report::PassReport;
use crate::sql::{quote_ident, Schemas, TABLE_ROW_ESTIMATE};

/// A pass that removed at least this share of a table's rows (and at least
/// [`VACUUM_HINT_MIN_ROWS`]) says so: autovacuum reclaims the space in time, but after a first
/// large run a manual VACUUM (ANALYZE) gives the planner true sizes at once.
const VACUUM_HINT_SHARE: f64 = 0.2;
const VACUUM_HINT_MIN_ROWS: u64 = 100_000;

/// One warning per table the pass emptied by a large share, from the planner's row
/// estimate taken before the pass (`pg_class.reltuples`; unknown estimates are skipped).
pub(crate) async fn vacuum_hints(
    client: &Object,
    schemas: &Schemas,
    report: &PassReport,
) -> Result<Vec<String>, Error> {
    let mut hints = Vec::new();
    for (schema, table) in schemas.per_instance_tables() {
        let label = format!("{schema}.{table}");
        let removed = report.rows_deleted.get(&label).copied().unwrap_or(0);
        if removed < VACUUM_HINT_MIN_ROWS {
            // No hint whatever the estimate: the query is spared.
            continue;
        }
        let estimate: Option<f32> = client
            .fetch_opt(TABLE_ROW_ESTIMATE, &[&schema, &table])
            .await
            .context("reading a table's row estimate")?
            .and_then(|r| r.get(0));
        hints.extend(vacuum_hint(schema, table, removed, estimate));
    }
    Ok(hints)
}

/// The hint for a table a pass removed `removed` rows of, given the planner's estimate of
/// its rows before the pass (None or not positive: unknown, no hint).
fn vacuum_hint(schema: &str, table: &str, removed: u64, estimate: Option<f32>) -> Option<String> {
    if removed < VACUUM_HINT_MIN_ROWS {
        return None;
    }
    let before = estimate.filter(|e| *e > 0.0)?;
    (removed as f64 >= VACUUM_HINT_SHARE * f64::from(before)).then(|| {
        format!(
            "removed {removed} rows of {schema}.{table} (about {:.0}% of its {} estimated rows): autovacuum will reclaim the space; `VACUUM (ANALYZE) {}` now keeps the planner's sizes true",
            100.0 * removed as f64 / f64::from(before),
            before as u64,
            format_args!("{}.{}", quote_ident(schema), quote_ident(table)),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifth_of_a_table_earns_a_hint_naming_the_quoted_table() {
        assert_eq!(
            vacuum_hint("duroxide", "history", 200_000, Some(1_000_000.0)).as_deref(),
            Some(
                "removed 200000 rows of duroxide.history (about 20% of its 1000000 estimated rows): \
                 autovacuum will reclaim the space; `VACUUM (ANALYZE) \"duroxide\".\"history\"` \
                 now keeps the planner's sizes true"
            )
        );
    }

    #[test]
    fn less_than_a_fifth_earns_none() {
        assert_eq!(vacuum_hint("df", "nodes", 199_999, Some(1_000_000.0)), None);
    }

    #[test]
    fn fewer_than_the_minimum_rows_earn_none_whatever_the_share() {
        assert_eq!(
            vacuum_hint("df", "instances", 99_999, Some(100_000.0)),
            None
        );
        assert!(vacuum_hint("df", "instances", 100_000, Some(100_000.0)).is_some());
    }

    #[test]
    fn an_unknown_estimate_earns_none() {
        for estimate in [None, Some(0.0), Some(-1.0)] {
            assert_eq!(vacuum_hint("df", "instances", 500_000, estimate), None);
        }
    }
}
