#!/usr/bin/env bash
# End-to-end run of compose.yaml: pulls pg_durable's public image, builds ours, seeds real
# workflows into the real engine, runs the reconciler as `once` (dry run, real pass,
# idempotent second pass) and as the daemon, and checks the JSON reports, what both stores
# hold afterwards, /healthz, /readyz and a clean exit on SIGTERM.
#
# Needs a Docker engine and the compose plugin. Where there is no engine (`docker info`
# fails), it prints "SKIPPED: no Docker engine" and exits 0: compose.yaml, the Dockerfile
# and the seed are then covered by tests/integration/packaging/, which also runs the seed
# and the reconciler against PostgreSQL with pg_durable installed and expects the same
# numbers as below.
#
#   tests/compose/run.sh            # from anywhere; cleans up after itself
set -euo pipefail
cd "$(dirname "$0")/../.."

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "SKIPPED: no Docker engine"
    exit 0
fi
if ! docker compose version >/dev/null 2>&1; then
    echo "FAILED: a Docker engine is here but not the compose plugin (docker compose)" >&2
    exit 1
fi

project="dfrec-e2e-$$"
compose() { docker compose -p "$project" -f compose.yaml "$@"; }
cleanup() { compose down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT

fail() {
    echo "FAILED: $*" >&2
    compose logs --no-color --tail 50 >&2 || true
    exit 1
}

# Each needle must appear in the one-line JSON report.
expect() {
    local what=$1 report=$2
    shift 2
    for needle in "$@"; do
        grep -qF -- "$needle" <<<"$report" || fail "$what: expected $needle in: $report"
    done
    echo "ok: $what"
}

# The psql of the postgres service, as the superuser, on the database pg_durable serves.
psql_postgres() { compose exec -T postgres psql -U postgres -d postgres -tA -v ON_ERROR_STOP=1 "$@"; }

echo "== pull pg_durable's image, build ours"
compose pull postgres seed || fail "cannot pull $(grep -m1 'image: ghcr.io' compose.yaml)"
compose build

# `run` starts postgres (waits until healthy) and the seed (waits until it has completed:
# the engine ready, the workflows ended, some aged).
echo "== once --dry-run --json"
dry=$(compose run --rm -T reconciler once --dry-run --json) || fail "dry run exited $?"
# The demo (deploy/compose/seed.sql): 8 finished workflows aged 40 days (6 completed, among
# them a JOIN and a RACE with 2 engine children each, 1 failed, 1 cancelled) and the aged
# orphan of a rolled-back df.start().
expect "dry run" "$dry" '"dry_run":true' \
    '"expired_removed":{"completed":6,"failed":1,"cancelled":1}' \
    '"orphans_reclaimed":1' '"engine_children_removed":4' '"errors":[]'

echo "== once --json"
real=$(compose run --rm -T --no-deps reconciler once --json) || fail "pass exited $?"
expect "pass" "$real" '"dry_run":false' \
    '"expired_removed":{"completed":6,"failed":1,"cancelled":1}' \
    '"orphans_reclaimed":1' '"engine_children_removed":4' '"errors":[]'

echo "== both stores after the pass"
left=$(psql_postgres -c "
    SELECT count(*) FROM public.demo_workflows w
     WHERE w.aged AND (EXISTS (SELECT 1 FROM df.instances d WHERE d.id = w.instance_id)
                       OR EXISTS (SELECT 1 FROM _duroxide.instances e
                                   WHERE e.instance_id = w.instance_id
                                      OR e.parent_instance_id = w.instance_id))") ||
    fail "cannot read the stores"
[ "$left" = "0" ] || fail "$left aged demo workflows are still in a store"
kept=$(psql_postgres -c "
    SELECT count(*) FROM public.demo_workflows w
      JOIN df.instances d ON d.id = w.instance_id AND d.status = w.outcome
      JOIN _duroxide.instances e ON e.instance_id = w.instance_id
     WHERE NOT w.aged") || fail "cannot read the stores"
[ "$kept" = "4" ] || fail "$kept of the 4 young and live demo workflows are as they were"
echo "ok: aged ones gone from both stores, young and live ones kept"

echo "== once --json (again: nothing left)"
again=$(compose run --rm -T --no-deps reconciler once --json) || fail "second pass exited $?"
expect "second pass" "$again" '"expired_removed":{"completed":0,"failed":0,"cancelled":0}' \
    '"orphans_reclaimed":0' '"errors":[]'

echo "== the daemon"
compose up -d reconciler
if command -v curl >/dev/null 2>&1; then
    for endpoint in healthz readyz; do
        for _ in $(seq 60); do
            curl -fsS "http://127.0.0.1:9187/$endpoint" >/dev/null 2>&1 && break
            sleep 1
        done
        curl -fsS "http://127.0.0.1:9187/$endpoint" >/dev/null || fail "/$endpoint did not answer 200"
        echo "ok: /$endpoint"
    done
    curl -fsS http://127.0.0.1:9187/metrics | grep -q '^# TYPE' || fail "/metrics is not Prometheus text"
    echo "ok: /metrics"
else
    echo "note: no curl; the HTTP endpoints were not checked"
fi
compose logs --no-color reconciler | tail -n 20

echo "== SIGTERM"
container=$(compose ps -q reconciler)
compose stop -t 45 reconciler
code=$(docker inspect -f '{{.State.ExitCode}}' "$container")
[ "$code" = "0" ] || fail "the daemon exited $code on SIGTERM, expected 0"
echo "ok: exit 0 on SIGTERM"

echo "PASSED: compose end to end"
