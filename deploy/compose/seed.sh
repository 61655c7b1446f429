#!/bin/sh
# Seeds the compose playground (compose.yaml, service `seed`): both pg_durable stores, the
# seed helpers and the demo population, then the reconciler's least-privileged role.
#
# Environment: the libpq variables (PGHOST, PGUSER, PGPASSWORD, PGDATABASE, ...), SEED_DIR
# (where the SQL files are mounted, default /seed), RECONCILER_PASSWORD (the role's
# password, default "reconciler"). Run again, it keeps the data and re-applies the role.
set -eu

dir="${SEED_DIR:-/seed}"
run_sql() {
    psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 "$@"
}

if [ "$(run_sql -tAc "SELECT count(*) FROM pg_namespace WHERE nspname = 'df'")" = "0" ]; then
    for file in schema.sql seed_functions.sql demo_seed.sql; do
        echo "seed: $file"
        # Each file is one transaction, as `df-reconciler demo` runs it.
        run_sql --single-transaction -f "$dir/$file"
    done
else
    echo "seed: schema df exists; keeping the data"
fi

echo "seed: role df_reconciler"
run_sql -v role=df_reconciler -v engine_schema=_duroxide -f "$dir/reconciler-role.sql"
run_sql -v password="${RECONCILER_PASSWORD:-reconciler}" <<'SQL'
ALTER ROLE df_reconciler PASSWORD :'password';
SQL
echo "seed: done"
