-- The least-privileged role df-reconciler connects as.
--
-- Run once per database that holds pg_durable, as a superuser (BYPASSRLS and membership
-- in pg_read_all_stats can only be handed out by one):
--
--   psql -d app -f deploy/sql/reconciler-role.sql
--   psql -d app -v engine_schema=duroxide -f deploy/sql/reconciler-role.sql   # pg_durable <= 0.2.2
--
-- psql variables (all optional):
--   role            the role to create or adjust            default df_reconciler
--   control_schema  pg_durable's control plane              default df
--   engine_schema   the duroxide engine store                default _duroxide
--                   (SELECT df.duroxide_schema() names it; older installs use duroxide)
--   audit_schema    the daemon's own audit trail (audit.schema in its configuration)
--                                                            default df_reconciler
--
-- Safe to run again (after an upgrade, or to repair grants). The role gets no password:
-- set one with \password df_reconciler, or authenticate it by certificate or peer in
-- pg_hba.conf. If CONNECT on the database was revoked from PUBLIC, also
-- GRANT CONNECT ON DATABASE app TO df_reconciler.
--
-- What the daemon does with each privilege:
--   * SELECT + DELETE on the per-instance tables of both stores: it finds and deletes
--     expired and orphaned instances, in one transaction per batch. Nothing else is
--     deleted: engine sessions, the migrations table, the readiness row, df.vars and the
--     worker heartbeat are per worker or per installation, not per instance.
--   * UPDATE (id) / UPDATE (instance_id): PostgreSQL requires UPDATE on one column for
--     SELECT ... FOR UPDATE SKIP LOCKED, which is how the daemon avoids ever waiting on the
--     live engine. It never updates a row.
--   * SELECT on the engine's migrations table: the engine-version check.
--     The engine's sessions table is only checked to exist, from the catalog, and needs no
--     privilege; _worker_ready (created by pg_durable's worker on its first start) is
--     neither required nor touched.
--   * BYPASSRLS: df.instances and df.nodes have row-level security; a role subject to it
--     would see only its own rows and take every other engine record for an orphan. The
--     daemon refuses to run without it (it sets row_security = off, so PostgreSQL raises
--     instead of hiding rows).
--   * pg_read_all_stats, used through INHERIT: lets the orphan guard see other sessions'
--     open transactions (pg_stat_activity.xact_start). Without it the guard would be
--     blind, so the daemon reclaims no orphan at all (expired instances still go) and
--     says so in `check` and every report. A NOINHERIT member is blind too.
--   * EXECUTE on df.duroxide_schema(): schemas.engine = "auto" asks it where the engine is.
--   * its own schema for the audit trail (df-reconciler migrate creates the tables there;
--     it cannot create the schema itself: CREATE SCHEMA needs CREATE on the database).
--   * search_path = pg_catalog, pg_temp as the role's default: nothing another role can
--     write is ever on it, for the daemon (which pins the same path in every session and
--     transaction, and qualifies every name) and for any other session that logs in as
--     this role (an operator's psql, a pooler's server connections).

\set ON_ERROR_STOP on
\if :{?role}
\else
\set role df_reconciler
\endif
\if :{?control_schema}
\else
\set control_schema df
\endif
\if :{?engine_schema}
\else
\set engine_schema _duroxide
\endif
\if :{?audit_schema}
\else
\set audit_schema df_reconciler
\endif

BEGIN;

-- psql does not substitute variables inside a DO block's body: pass the name through a
-- setting of this transaction.
SET LOCAL df_reconciler.role_name = :'role';
DO $role$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles
                   WHERE rolname = current_setting('df_reconciler.role_name')) THEN
        EXECUTE format('CREATE ROLE %I LOGIN', current_setting('df_reconciler.role_name'));
    END IF;
END
$role$;
ALTER ROLE :"role" WITH LOGIN BYPASSRLS INHERIT NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION;
-- Its sessions find functions, operators and types in the catalog only (search-path
-- hijacking, CVE-2018-1058): a role that may create objects in public or elsewhere must
-- not be able to run code as this one.
ALTER ROLE :"role" SET search_path = pg_catalog, pg_temp;

GRANT USAGE ON SCHEMA :"control_schema", :"engine_schema" TO :"role";

-- Control plane: the per-instance tables.
GRANT SELECT, DELETE ON :"control_schema".instances, :"control_schema".nodes TO :"role";
GRANT UPDATE (id) ON :"control_schema".instances TO :"role";
GRANT EXECUTE ON FUNCTION :"control_schema".duroxide_schema() TO :"role";

-- Engine store: the per-instance tables (the daemon refuses to run if the engine gains one
-- it does not know), and the migrations table for the version check.
GRANT SELECT, DELETE ON
    :"engine_schema".instances,
    :"engine_schema".executions,
    :"engine_schema".history,
    :"engine_schema".orchestrator_queue,
    :"engine_schema".worker_queue,
    :"engine_schema".instance_locks,
    :"engine_schema".kv_store,
    :"engine_schema".kv_delta
    TO :"role";
GRANT UPDATE (instance_id) ON :"engine_schema".instances TO :"role";
GRANT SELECT ON :"engine_schema"._duroxide_migrations TO :"role";

-- The oldest-open-transaction guard (without it, no orphan is ever reclaimed).
GRANT pg_read_all_stats TO :"role";

-- The audit trail: a schema of its own, owned by the role (or, when it already exists,
-- one the role may create its tables in).
CREATE SCHEMA IF NOT EXISTS :"audit_schema" AUTHORIZATION :"role";
GRANT USAGE, CREATE ON SCHEMA :"audit_schema" TO :"role";

COMMIT;
