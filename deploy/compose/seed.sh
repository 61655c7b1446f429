#!/bin/sh
# Seeds the compose playground (compose.yaml, service `seed`) on the real pg_durable:
# 1. waits until pg_durable's engine is ready (its background worker has written
#    <engine>._worker_ready; df.duroxide_schema() names the engine store);
# 2. creates the reconciler's least-privileged role (reconciler-role.sql) and sets its
#    password;
# 3. starts the demo workflows with df.start() and ages some of them (seed.sql), unless
#    public.demo_workflows says that was done already: then it keeps the data.
#
# Environment: the libpq variables (PGHOST, PGUSER, PGPASSWORD, PGDATABASE, ...), SEED_DIR
# (where the SQL files are mounted, default /seed), RECONCILER_PASSWORD (the role's
# password, default "reconciler"), SEED_TIMEOUT (seconds each wait may take: for the
# engine, for the workflows; default 60). Run again, it keeps the data and re-applies the
# role.
set -eu

dir="${SEED_DIR:-/seed}"
timeout="${SEED_TIMEOUT:-60}"
run_sql() {
    psql --no-psqlrc --quiet -v ON_ERROR_STOP=1 "$@"
}

# Prints the engine schema once the worker serves, nothing before; fails while the server
# or the extension is not there yet. Ready: the worker has initialised the engine store
# (a row in _worker_ready, which outlives restarts) and written its epoch since this
# server started (the image's first start runs on a temporary server).
engine_ready() {
    run_sql -tA <<'SQL'
SELECT df.duroxide_schema() AS engine \gset
SELECT to_regclass(format('%I._worker_ready', :'engine')) IS NOT NULL AS has_table \gset
\if :has_table
SELECT :'engine' FROM :"engine"._worker_ready
 WHERE schema_version >= 1
   AND EXISTS (SELECT 1 FROM df._worker_epoch WHERE started_at >= pg_postmaster_start_time())
 LIMIT 1;
\endif
SQL
}

echo "seed: waiting for pg_durable's engine (at most ${timeout}s)"
deadline=$(($(date +%s) + timeout))
errors=$(mktemp)
trap 'rm -f "$errors"' EXIT
while :; do
    if engine=$(engine_ready 2>"$errors"); then
        [ -n "$engine" ] && break
        last="the background worker has not started the engine yet (no row in _worker_ready, or no epoch since the server started)"
    else
        last=$(cat "$errors")
    fi
    if [ "$(date +%s)" -ge "$deadline" ]; then
        echo "seed: pg_durable's engine was not ready within ${timeout}s; last check: $last" >&2
        exit 1
    fi
    sleep 1
done
echo "seed: engine ready (store $engine)"

echo "seed: role df_reconciler"
run_sql -v role=df_reconciler -v engine_schema="$engine" -f "$dir/reconciler-role.sql"
run_sql -v password="${RECONCILER_PASSWORD:-reconciler}" <<'SQL'
ALTER ROLE df_reconciler PASSWORD :'password';
SQL

if [ "$(run_sql -tAc "SELECT to_regclass('public.demo_workflows') IS NOT NULL")" = "t" ]; then
    echo "seed: public.demo_workflows exists; keeping the data"
else
    echo "seed: seed.sql (real workflows, started with df.start())"
    # Not one transaction: each df.start() must be committed before the engine can run it.
    run_sql -v engine="$engine" -v timeout="$timeout" -f "$dir/seed.sql"
fi
echo "seed: done"
