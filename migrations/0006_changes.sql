-- "What changed?" (issue 12 item 3): one row per event an operator asks about after the fact: workers
-- started and stopped, migrations applied, replays, pauses and resumes, route settings changed, a
-- destination's Retry-After and circuit transitions, ranges failed or quarantined. Written by the statement
-- that makes the change (one row per event, never per message); read by `courier changes`; rows older than
-- worker.changes_retention are pruned by the workers' heartbeat task.
-- No foreign key: the history of a route outlives the route.
CREATE TABLE courier_changes (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    -- e.g. 'worker.started', 'route.paused', 'range.failed' (courier_store::changes::Kind).
    kind        text NOT NULL,
    route       text,
    destination text,
    -- Who: a worker id, an operator's user@host, `courier migrate`.
    actor       text,
    summary     text NOT NULL
);

-- `courier changes --since 2h` and pruning both walk time.
CREATE INDEX courier_changes_at ON courier_changes (at);

-- Pausing a route (issue 12 item 4): `paused` (from 0001) stops every worker from leasing the route's
-- ranges at its next lease call; the planner still carves them, so the lag stays visible.
ALTER TABLE courier_routes
    ADD COLUMN paused_at    timestamptz,
    ADD COLUMN paused_by    text,
    ADD COLUMN pause_reason text;

-- Every lease statement reads the paused routes once: an index holding only those keeps that free.
CREATE INDEX courier_routes_paused ON courier_routes (name) WHERE paused;
