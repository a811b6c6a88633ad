-- Retention, exactly (issue 11): offsets Kafka deleted (retention, DeleteRecords) before courier delivered
-- them. When Kafka's log start falls inside a range, the worker delivers what Kafka still holds and records
-- here exactly which offsets were gone, in the same transaction as the range's checkpoint, fenced by the
-- lease's epoch (a range wholly below the log start is settled the same way, with no message delivered).
-- Listed and alerted on by `courier status`; docs/runbooks/retention.md says what to do.
CREATE TABLE courier_losses (
    id           bigserial PRIMARY KEY,
    route        text NOT NULL,
    partition    int NOT NULL,
    -- The offsets lost: [start_offset, end_offset).
    start_offset bigint NOT NULL,
    end_offset   bigint NOT NULL,
    -- Why, in words (the log start Kafka reported).
    reason       text NOT NULL,
    -- The operator's replay the loss was found by, if any (courier_replays).
    replay_id    bigint,
    recorded_at  timestamptz NOT NULL DEFAULT now(),
    CHECK (start_offset >= 0 AND start_offset < end_offset),
    -- The same loss found again (a replay of its range) is recorded once.
    UNIQUE (route, partition, start_offset, end_offset),
    FOREIGN KEY (route, partition) REFERENCES courier_partitions (route, partition) ON DELETE CASCADE
);

-- What `courier status` alerts on: the losses recorded recently.
CREATE INDEX courier_losses_recorded ON courier_losses (recorded_at);
