-- A route's delivery settings are part of its identity (issue 11, item 7): two workers that disagree on
-- a route's destination URL or format would split its messages between them, silently.

-- What the fleet agreed on: a JSON object of setting name -> value (as text, secrets redacted), e.g.
-- {"destination.url": "https://hooks.example.com/in", "destination.format": "json", ...}. NULL for a
-- route recorded before this migration: the first worker to start records its own settings.
-- `updated_at`: when the settings were last recorded or deliberately changed (`courier routes update`).
ALTER TABLE courier_routes
    ADD COLUMN settings   jsonb,
    ADD COLUMN updated_at timestamptz NOT NULL DEFAULT now();
