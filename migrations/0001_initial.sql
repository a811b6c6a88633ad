-- courier's store: every piece of delivery progress lives here; Kafka holds the data.
-- Applied once, under an advisory lock, by `courier migrate` (never by worker code).

-- A route is one (topic -> destination) pair with its own progress.
CREATE TABLE courier_routes (
    name        text PRIMARY KEY,
    topic       text NOT NULL,
    destination text NOT NULL,
    config      jsonb NOT NULL DEFAULT '{}'::jsonb,
    paused      boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Per route and partition: `frontier` is the next offset not yet carved into a range; `watermark` is the
-- offset below which every live range is settled (done, or failed and listed). Both only move forward.
CREATE TABLE courier_partitions (
    route          text NOT NULL REFERENCES courier_routes (name) ON DELETE CASCADE,
    partition      int NOT NULL CHECK (partition >= 0),
    initial_offset bigint NOT NULL CHECK (initial_offset >= 0),
    frontier       bigint NOT NULL,
    watermark      bigint NOT NULL,
    -- When the un-carved tail was first seen waiting, so the planner can carve a short range for a quiet topic.
    tail_seen_at   timestamptz,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (route, partition),
    CHECK (initial_offset <= watermark AND watermark <= frontier)
);

-- The unit of leasing, delivery, checkpointing, failure and replay: [start_offset, end_offset).
CREATE TABLE courier_ranges (
    id               bigserial PRIMARY KEY,
    route            text NOT NULL,
    partition        int NOT NULL,
    start_offset     bigint NOT NULL,
    end_offset       bigint NOT NULL,
    -- live ranges tile the partition and drive the watermark; replay ranges are extra deliveries.
    kind             text NOT NULL DEFAULT 'live' CHECK (kind IN ('live', 'replay')),
    state            text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'leased', 'done', 'failed')),
    -- Fencing token: + 1 on every lease. Checkpoints, renewals and failures compare-and-set on it.
    epoch            bigint NOT NULL DEFAULT 0,
    lease_owner      text,
    lease_expires_at timestamptz,
    attempts         int NOT NULL DEFAULT 0,
    -- Offsets below it were delivered by an attempt that then failed: a retry resumes here, so a partial
    -- failure does not deliver the first batches twice.
    resume_offset    bigint,
    not_before       timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    -- Set when an operator replayed this range (courier_replays holds who, why and when).
    replay_id        bigint,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (start_offset >= 0 AND start_offset < end_offset),
    CHECK ((state = 'leased') = (lease_owner IS NOT NULL AND lease_expires_at IS NOT NULL)),
    FOREIGN KEY (route, partition) REFERENCES courier_partitions (route, partition) ON DELETE CASCADE
);

-- Live ranges never overlap: two planners racing insert the same start offsets, and one of them loses.
CREATE UNIQUE INDEX courier_ranges_live_start ON courier_ranges (route, partition, start_offset)
    WHERE kind = 'live';

-- What a worker looks for, oldest first (`lease` walks it in id order and stops after k eligible rows):
-- small, because settled ranges leave it.
CREATE INDEX courier_ranges_workable ON courier_ranges (route, kind, id)
    WHERE state IN ('pending', 'leased');

-- The lowest unsettled live range of each partition: the head an ordered route leases next, and where
-- the watermark stops.
CREATE INDEX courier_ranges_heads ON courier_ranges (route, partition, start_offset)
    WHERE state IN ('pending', 'leased') AND kind = 'live';

-- What an operator looks for.
CREATE INDEX courier_ranges_failed ON courier_ranges (route, partition, start_offset)
    WHERE state = 'failed';

-- Who runs what version, since when: the answer to "what changed?".
CREATE TABLE courier_workers (
    id           text PRIMARY KEY,
    host         text NOT NULL,
    pid          int NOT NULL,
    version      text NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    stopped_at   timestamptz
);

-- Every replay, always audited.
CREATE TABLE courier_replays (
    id           bigserial PRIMARY KEY,
    route        text NOT NULL REFERENCES courier_routes (name) ON DELETE CASCADE,
    partition    int,
    start_offset bigint,
    end_offset   bigint,
    ranges       int NOT NULL,
    requested_by text NOT NULL,
    reason       text NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

-- A destination's `Retry-After`, shared by every worker delivering to it.
CREATE TABLE courier_destinations (
    name         text PRIMARY KEY,
    not_before   timestamptz NOT NULL DEFAULT now(),
    reason       text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);
