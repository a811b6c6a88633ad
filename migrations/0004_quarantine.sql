-- Poison isolation (issue 11): a message a destination refuses on its own is set aside here, so its range
-- can be checkpointed and the partition keep moving. Written in the same transaction as the range's
-- checkpoint, fenced by the lease's epoch; listed by `courier status`; replayed one by one or together
-- (`courier replay --quarantined`) as replay ranges [offset, offset + 1).
CREATE TABLE courier_quarantine (
    route            text NOT NULL,
    partition        int NOT NULL,
    message_offset   bigint NOT NULL CHECK (message_offset >= 0),
    -- The destination's answer: its HTTP status (none when it answered nothing usable) and the start of
    -- its body.
    status           int,
    reason           text NOT NULL,
    -- The dead-letter topic the message was also written to, if the route names one.
    dead_letter_topic text,
    -- How many times it was quarantined: more than 1 means a replay was refused again.
    times            int NOT NULL DEFAULT 1,
    quarantined_at   timestamptz NOT NULL DEFAULT now(),
    -- Set when an operator replayed it (courier_replays holds who, why and when); a refusal of the replay
    -- quarantines it again and clears both.
    replay_id        bigint,
    replayed_at      timestamptz,
    PRIMARY KEY (route, partition, message_offset),
    FOREIGN KEY (route, partition) REFERENCES courier_partitions (route, partition) ON DELETE CASCADE
);

-- What `courier status` and `courier replay --quarantined` look for: the entries not replayed yet.
CREATE INDEX courier_quarantine_open ON courier_quarantine (route, partition, message_offset)
    WHERE replayed_at IS NULL;
