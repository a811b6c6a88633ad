-- Cost proportional to work, not to configuration (issue: routes x tasks x workers).

-- Leasing looks for work across every route a worker serves in one statement, oldest range first (fair:
-- a range waits only behind ranges carved before it). The per-route index it replaces served one lease
-- statement per route per poll.
DROP INDEX courier_ranges_workable;
CREATE INDEX courier_ranges_workable ON courier_ranges (kind, id)
    WHERE state IN ('pending', 'leased');

-- Planning a route is owned by one worker at a time: `planner` holds it until `planner_until`, renewing
-- as it goes; when it dies, another worker takes the route over after that. Without it every worker's
-- planner read Kafka and ran store statements for every route on every tick.
ALTER TABLE courier_routes
    ADD COLUMN planner       text,
    ADD COLUMN planner_until timestamptz;
