-- The compose playground's demo population: real workflows, started with df.start() on the
-- real pg_durable and run by its engine, then some of them aged, so that a pass of
-- df-reconciler has old ones to delete and young and live ones to keep.
--
-- Run by seed.sh, once the engine is ready, as a superuser (the image allows superuser
-- instances), in ONE psql session and NOT as one transaction: df.start() writes the df
-- rows in the caller's transaction and the engine only sees them once committed, so every
-- start is its own committed statement before anything waits on it.
--
-- psql variables (both set by seed.sh):
--   engine   the engine store, as df.duroxide_schema() names it (_duroxide)
--   timeout  seconds each wait may take before the seed fails
--
-- What it leaves (public.demo_workflows lists it; its existence tells seed.sh the demo is
-- seeded):
--   aged 40 days, so the default 30-day window has expired them:
--     demo-answer, demo-greeting, demo-sum   simple one-step workflows, completed
--     demo-sequence                           two steps, the second reads the first's result
--     demo-join                               two parallel branches (engine child
--                                             orchestrations), then a step: completed
--     demo-race                               a query against a 10-minute sleep (two
--                                             children, the loser cancelled): completed
--     demo-failing                            division by zero: failed
--     demo-cancelled                          a 10-minute sleep, df.cancel()ed: cancelled
--     demo-rolled-back                        BEGIN; df.start(); ROLLBACK: no df row, and an
--                                             engine record that failed ("not found after
--                                             5s"): an orphan
--   young (finished just now), kept until they are 30 days old:
--     demo-recent-1, demo-recent-2
--   live, never deleted:
--     demo-heartbeat-loop                     a root LOOP: inserts into public.demo_heartbeats,
--                                             sleeps 10 s, again (continue-as-new each time)
--     demo-approval                           waits for signal 'approval', without a timeout:
--                                             SELECT df.signal(instance_id, 'approval',
--                                             '{"approved": true}') finishes it

\set ON_ERROR_STOP on
SET client_min_messages = warning;

-- Waits, in this session only, until `ready` (a query returning one boolean) is true; fails
-- the seed after `timeout_s` seconds, saying what it waited for and what `report` (a query
-- returning text) says about it. Each check is a new statement, so it sees what the engine
-- has committed since.
CREATE PROCEDURE pg_temp.demo_wait(what text, ready text, report text, timeout_s int)
LANGUAGE plpgsql AS $fn$
DECLARE
    deadline timestamptz := clock_timestamp() + make_interval(secs => timeout_s);
    ok boolean;
    details text;
BEGIN
    LOOP
        EXECUTE ready INTO ok;
        EXIT WHEN ok;
        IF clock_timestamp() > deadline THEN
            EXECUTE report INTO details;
            RAISE EXCEPTION 'seed: % not within % s', what, timeout_s
                USING DETAIL = coalesce(details, '');
        END IF;
        PERFORM pg_sleep(0.2);
    END LOOP;
END
$fn$;

-- What this session started: label, id, the outcome it must reach, whether it gets aged.
CREATE TEMP TABLE demo (
    label       text PRIMARY KEY,
    instance_id text NOT NULL,
    outcome     text NOT NULL CHECK (outcome IN ('completed', 'failed', 'cancelled', 'orphan', 'running')),
    aged        boolean NOT NULL
);

-- What the heartbeat loop writes.
CREATE TABLE IF NOT EXISTS public.demo_heartbeats (
    id   bigserial PRIMARY KEY,
    beat timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Each statement commits on its own: the df rows and the line in `demo` together.
INSERT INTO demo SELECT 'demo-answer', df.start('SELECT 42 AS answer', 'demo-answer'), 'completed', true;
INSERT INTO demo SELECT 'demo-greeting', df.start($q$SELECT 'hello' AS greeting$q$, 'demo-greeting'), 'completed', true;
INSERT INTO demo SELECT 'demo-sum', df.start('SELECT sum(n) AS total FROM generate_series(1, 100) AS n', 'demo-sum'), 'completed', true;
INSERT INTO demo SELECT 'demo-sequence',
    df.start(df.seq(df.as('SELECT 100 AS amount', 'total'),
                    'SELECT ($total.amount)::int * 2 AS doubled'), 'demo-sequence'),
    'completed', true;
INSERT INTO demo SELECT 'demo-join',
    df.start(df.seq(df.as(df.join('SELECT 1 AS a', 'SELECT 2 AS b'), 'both'),
                    'SELECT 3 AS after_join'), 'demo-join'),
    'completed', true;
INSERT INTO demo SELECT 'demo-race',
    df.start(df.race($q$SELECT pg_sleep(1), 'fast' AS winner$q$, df.sleep(600)), 'demo-race'),
    'completed', true;
INSERT INTO demo SELECT 'demo-failing', df.start('SELECT 1/0 AS impossible', 'demo-failing'), 'failed', true;
INSERT INTO demo SELECT 'demo-cancelled',
    df.start(df.seq(df.sleep(600), $q$SELECT 'too late' AS never$q$), 'demo-cancelled'),
    'cancelled', true;
INSERT INTO demo SELECT 'demo-recent-1', df.start('SELECT now() AS finished', 'demo-recent-1'), 'completed', false;
INSERT INTO demo SELECT 'demo-recent-2',
    df.start(df.seq('SELECT 7 AS lucky', 'SELECT 8 AS next'), 'demo-recent-2'), 'completed', false;
INSERT INTO demo SELECT 'demo-heartbeat-loop',
    df.start(df.loop(df.seq('INSERT INTO public.demo_heartbeats DEFAULT VALUES', df.sleep(10))),
             'demo-heartbeat-loop'),
    'running', false;
INSERT INTO demo SELECT 'demo-approval',
    df.start(df.seq(df.as(df.wait_for_signal('approval'), 'sig'),
                    $q$SELECT ($sig::jsonb->'data'->>'approved')::boolean AS approved$q$),
             'demo-approval'),
    'running', false;

-- A start rolled back: its df rows vanish, the engine record it already queued stays and
-- fails after about 5 s ("not found ... transaction may have been rolled back").
BEGIN;
SELECT df.start($q$SELECT 'never runs' AS rolled_back$q$, 'demo-rolled-back') AS rolled_back_id \gset
ROLLBACK;
INSERT INTO demo VALUES ('demo-rolled-back', :'rolled_back_id', 'orphan', true);

-- Cancel the long sleep once the engine runs it.
CALL pg_temp.demo_wait('demo-cancelled to run',
    $q$SELECT EXISTS (SELECT 1 FROM df.instances i JOIN demo d ON d.instance_id = i.id
                      WHERE d.label = 'demo-cancelled' AND i.status = 'running')$q$,
    $q$SELECT string_agg(i.status, ',') FROM df.instances i JOIN demo d ON d.instance_id = i.id
       WHERE d.label = 'demo-cancelled'$q$,
    :timeout);
SELECT df.cancel(instance_id, 'cancelled by the compose seed') AS cancelled
  FROM demo WHERE label = 'demo-cancelled' \gset
\echo seed: :cancelled

-- The engine's view of each demo instance: its root and every child orchestration under
-- it, and whether the current execution of each is over (Completed or Failed, with a
-- completed_at). A view in this session only, so the waits and the aging share it.
CREATE TEMP VIEW demo_engine AS
WITH RECURSIVE tree(label, instance_id) AS (
    SELECT d.label, d.instance_id FROM demo d
  UNION
    SELECT tree.label, c.instance_id
    FROM tree JOIN :"engine".instances c ON c.parent_instance_id = tree.instance_id
)
SELECT tree.label, tree.instance_id, ex.status,
       ex.status IN ('Completed', 'Failed') AND ex.completed_at IS NOT NULL AS over
FROM tree
LEFT JOIN :"engine".instances ei ON ei.instance_id = tree.instance_id
LEFT JOIN :"engine".executions ex
       ON ex.instance_id = ei.instance_id AND ex.execution_id = ei.current_execution_id;

-- Each demo instance where it should be: the finite ones over in both stores (the df
-- status, and every engine execution of the tree), the live ones running.
CREATE TEMP VIEW demo_state AS
SELECT d.label, d.outcome,
       i.status AS df_status,
       (SELECT string_agg(coalesce(e.status, 'none'), ',' ORDER BY e.instance_id)
          FROM demo_engine e WHERE e.label = d.label) AS engine_statuses,
       CASE WHEN d.outcome = 'orphan' THEN i.id IS NULL
            WHEN d.outcome = 'running' THEN i.status = 'running'
            ELSE i.status IN ('completed', 'failed', 'cancelled') END
       AND CASE WHEN d.outcome = 'running'
                THEN EXISTS (SELECT 1 FROM demo_engine e
                             WHERE e.label = d.label AND e.instance_id = d.instance_id
                               AND e.status IS NOT NULL)
                ELSE (SELECT bool_and(coalesce(e.over, false))
                        FROM demo_engine e WHERE e.label = d.label) END AS settled
FROM demo d
LEFT JOIN df.instances i ON i.id = d.instance_id;

CALL pg_temp.demo_wait('the demo workflows to finish (the live ones to run)',
    'SELECT bool_and(settled) FROM demo_state',
    $q$SELECT string_agg(format('%s: df %s, engine %s', label, coalesce(df_status, 'none'),
                                coalesce(engine_statuses, 'none')), '; ' ORDER BY label)
       FROM demo_state WHERE NOT settled$q$,
    :timeout);

-- Each finished as it should have (a demo that went differently would teach the wrong
-- numbers).
DO $check$
DECLARE
    wrong text;
BEGIN
    SELECT string_agg(format('%s: %s, expected %s', label, df_status, outcome), '; ')
      INTO wrong
      FROM demo_state
     WHERE outcome IN ('completed', 'failed', 'cancelled') AND df_status <> outcome;
    IF wrong IS NOT NULL THEN
        RAISE EXCEPTION 'seed: a demo workflow ended differently: %', wrong;
    END IF;
END
$check$;

-- Age the finished ones as if they had run 40 days ago: only their timestamps, in both
-- stores, for the instance and every child orchestration of it.
BEGIN;
CREATE TEMP TABLE demo_aged ON COMMIT DROP AS
SELECT e.instance_id FROM demo_engine e JOIN demo d ON d.label = e.label WHERE d.aged;
UPDATE df.instances i
   SET created_at = i.created_at - interval '40 days',
       updated_at = i.updated_at - interval '40 days',
       completed_at = i.completed_at - interval '40 days'
  FROM demo d WHERE d.aged AND i.id = d.instance_id;
UPDATE df.nodes n
   SET created_at = n.created_at - interval '40 days',
       updated_at = n.updated_at - interval '40 days'
  FROM demo d WHERE d.aged AND n.instance_id = d.instance_id;
UPDATE :"engine".instances ei
   SET created_at = ei.created_at - interval '40 days',
       updated_at = ei.updated_at - interval '40 days'
  FROM demo_aged a WHERE ei.instance_id = a.instance_id;
UPDATE :"engine".executions ex
   SET started_at = ex.started_at - interval '40 days',
       completed_at = ex.completed_at - interval '40 days'
  FROM demo_aged a WHERE ex.instance_id = a.instance_id;
UPDATE :"engine".history h
   SET created_at = h.created_at - interval '40 days'
  FROM demo_aged a WHERE h.instance_id = a.instance_id;
COMMIT;

-- The list of what was seeded, last: its existence means the seed completed.
CREATE TABLE public.demo_workflows AS
SELECT label, instance_id, outcome, aged FROM demo ORDER BY aged DESC, outcome, label;
ALTER TABLE public.demo_workflows ADD PRIMARY KEY (label);
COMMENT ON TABLE public.demo_workflows IS
    'df-reconciler compose playground: the workflows deploy/compose/seed.sql started. '
    'aged: moved 40 days back, so a pass deletes them (the orphan from the engine store).';

SELECT format('seed: %s workflows (%s aged 40 days, %s young, %s live)', count(*),
              count(*) FILTER (WHERE aged),
              count(*) FILTER (WHERE NOT aged AND outcome <> 'running'),
              count(*) FILTER (WHERE outcome = 'running')) AS summary
  FROM public.demo_workflows \gset
\echo :summary
