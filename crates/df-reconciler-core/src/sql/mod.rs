//! Every SQL statement of the daemon, as named and commented templates.
//!
//! - [`control`]: the `df` control plane alone.
//! - [`engine`]: the duroxide engine store alone.
//! - [`reconcile`]: the set-difference selections that join both stores.
//!
//! Templates name the schemas as `{control}` and `{engine}`; [`Schemas::render`] substitutes
//! the quoted identifiers once per pass. Ids travel as ONE `text[]` parameter per statement,
//! never one bind parameter per id.

pub mod control;
pub mod engine;
pub mod reconcile;

/// The two schemas of one database, as quoted SQL identifiers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schemas {
    pub control: String,
    pub engine: String,
}

impl Schemas {
    pub fn new(control: &str, engine: &str) -> Self {
        Self {
            control: control.to_owned(),
            engine: engine.to_owned(),
        }
    }

    /// Substitutes `{control}` and `{engine}` with the quoted schema names, and
    /// `{ei_is_child}` with the child-shape test of `ei.instance_id`.
    pub fn render(&self, template: &str) -> String {
        template
            .replace("{control}", &quote_ident(&self.control))
            .replace("{engine}", &quote_ident(&self.engine))
            .replace("{ei_is_child}", &engine::child_shape("ei.instance_id"))
    }
}

/// Quotes an identifier the way PostgreSQL's `quote_ident` does, always.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A per-instance table and the column that holds the instance id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceTable {
    pub name: &'static str,
    pub key: &'static str,
}

impl InstanceTable {
    /// `DELETE` of the rows of the given ids (`$1 text[]`), or the same predicate counted in
    /// a dry run: one definition, so a dry run counts exactly what a real pass deletes.
    /// The ids are joined from `unnest($1)` rather than tested with `= ANY($1)`, which
    /// the planner turned into sequential scans of narrow tables. `$1` holds no duplicates.
    pub fn statement(&self, schema_placeholder: &str, dry_run: bool) -> String {
        let (table, key) = (self.name, self.key);
        if dry_run {
            format!(
                "SELECT count(*) FROM {schema_placeholder}.{table} t \
                 JOIN unnest($1::text[]) AS u(id) ON t.{key}::text = u.id"
            )
        } else {
            format!(
                "DELETE FROM {schema_placeholder}.{table} t \
                 USING unnest($1::text[]) AS u(id) WHERE t.{key}::text = u.id"
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted() {
        assert_eq!(quote_ident("df"), "\"df\"");
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        let s = Schemas::new("df", "_duroxide");
        assert_eq!(
            s.render("SELECT 1 FROM {control}.instances, {engine}.instances"),
            "SELECT 1 FROM \"df\".instances, \"_duroxide\".instances"
        );
    }

    #[test]
    fn dry_run_counts_what_a_pass_deletes() {
        let t = InstanceTable {
            name: "history",
            key: "instance_id",
        };
        let delete = t.statement("{engine}", false);
        let count = t.statement("{engine}", true);
        // Same table, same join on the same key: only the verb differs.
        for s in [&delete, &count] {
            assert!(s.contains("{engine}.history t"), "{s}");
            assert!(s.contains("unnest($1::text[]) AS u(id)"), "{s}");
            assert!(s.contains("t.instance_id::text = u.id"), "{s}");
        }
        assert!(delete.starts_with("DELETE") && count.starts_with("SELECT count(*)"));
    }
}
