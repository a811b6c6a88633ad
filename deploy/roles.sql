-- Least-privilege PostgreSQL roles for courier. Run once per database, as a superuser (or a role with
-- CREATEROLE that owns the database), with psql, connected to courier's database:
--
--   psql -v ON_ERROR_STOP=1 -d courier -f deploy/roles.sql
--   psql -d courier -c "\password courier_migrator" -c "\password courier_worker"
--
-- Role names are psql variables, so two installations can share a cluster:
--   psql ... -v migrator=orders_migrator -v worker=orders_worker -f deploy/roles.sql
--
-- What each role may do:
-- - the migrator (`courier migrate`, `courier run --migrate`) creates and owns courier's tables: it runs
--   the DDL of migrations/*.sql and nothing else should;
-- - the worker (`courier run`, `status`, `changes`, `pause`, `replay`, `routes`, `probe`) reads and
--   writes rows of those tables (SELECT, INSERT, UPDATE, DELETE, and the sequences behind their ids) and
--   can create, alter or drop nothing: a worker never runs DDL (incident 8), and now it cannot.
-- Run it before the first `courier migrate`: the default privileges below grant the worker its DML on
-- every table the migrator creates later. Safe to run again.
--
-- Give courier a database of its own: the worker's grants cover every table of the schema.

\if :{?migrator}
\else
\set migrator courier_migrator
\endif
\if :{?worker}
\else
\set worker courier_worker
\endif

SELECT format('CREATE ROLE %I LOGIN', :'migrator')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'migrator') \gexec
SELECT format('CREATE ROLE %I LOGIN', :'worker')
WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'worker') \gexec

SELECT format('GRANT CONNECT ON DATABASE %I TO %I, %I', current_database(), :'migrator', :'worker') \gexec

-- Before PostgreSQL 15 every role may create tables in `public`: not the worker.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"migrator";
GRANT USAGE ON SCHEMA public TO :"worker";

-- Tables and sequences the migrator creates from now on.
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"worker";
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"worker";

-- Tables already there (a database migrated before these roles existed). Their owner stays who created
-- them; to hand them to the migrator: REASSIGN OWNED BY <old owner> TO courier_migrator (as a superuser).
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"worker";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"worker";
