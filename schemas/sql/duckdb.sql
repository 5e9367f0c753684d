-- Damselfly lake views for DuckDB: the same tables `damselfly sql` has, over a local lake (or a local copy of an S3 one).
--
--   cd LAKE && duckdb -init /path/to/damselfly/schemas/sql/duckdb.sql
--
-- Paths are relative to the lake's root, so run DuckDB from there. DuckDB cannot create a view
-- over a table that has no files yet: statements for such tables fail with "No files found"
-- and the others still work. Rollup rows are mergeable partials: a minute written by two
-- batches has a row in each file until `damselfly compact` merges the hour, so sum them with
-- the `*_merged` views (or the same GROUP BY) rather than averaging `avg`.
-- Unlike `damselfly sql`, a glob sees a compaction's merged file and its sources side by side
-- for the seconds between its write and its deletes.

CREATE OR REPLACE VIEW raw AS SELECT * FROM read_parquet('raw/*/*/*.parquet', hive_partitioning = true, hive_types = {'dt': VARCHAR, 'hour': VARCHAR});

CREATE OR REPLACE VIEW dlq AS SELECT * FROM read_parquet('dlq/*/*/*.parquet', hive_partitioning = true, hive_types = {'dt': VARCHAR, 'hour': VARCHAR});

CREATE OR REPLACE VIEW alarms AS SELECT * FROM read_parquet('alarms/*/*/*.parquet', hive_partitioning = true, hive_types = {'dt': VARCHAR, 'hour': VARCHAR});

CREATE OR REPLACE VIEW rollup_1m AS SELECT *, "sum" / "count" AS avg FROM read_parquet('rollup_1m/*/*/*.parquet', hive_partitioning = true, hive_types = {'dt': VARCHAR, 'hour': VARCHAR});

CREATE OR REPLACE VIEW rollup_1m_merged AS SELECT window_start, ns, mcis, vm, csp, region, os, metric, device, dt, hour, sum("count") AS "count", sum("sum") AS "sum", min("min") AS "min", max("max") AS "max", arg_min("first", first_ts) AS "first", min(first_ts) AS first_ts, arg_max("last", last_ts) AS "last", max(last_ts) AS last_ts, sum("sum") / sum("count") AS avg FROM read_parquet('rollup_1m/*/*/*.parquet', hive_partitioning = true, hive_types = {'dt': VARCHAR, 'hour': VARCHAR}) GROUP BY window_start, ns, mcis, vm, csp, region, os, metric, device, dt, hour;

CREATE OR REPLACE VIEW rollup_1h AS SELECT *, "sum" / "count" AS avg FROM read_parquet('rollup_1h/*/*/*.parquet', hive_partitioning = true, hive_types = {'dt': VARCHAR, 'hour': VARCHAR});

CREATE OR REPLACE VIEW rollup_1h_merged AS SELECT window_start, ns, mcis, vm, csp, region, os, metric, device, dt, hour, sum("count") AS "count", sum("sum") AS "sum", min("min") AS "min", max("max") AS "max", arg_min("first", first_ts) AS "first", min(first_ts) AS first_ts, arg_max("last", last_ts) AS "last", max(last_ts) AS last_ts, sum("sum") / sum("count") AS avg FROM read_parquet('rollup_1h/*/*/*.parquet', hive_partitioning = true, hive_types = {'dt': VARCHAR, 'hour': VARCHAR}) GROUP BY window_start, ns, mcis, vm, csp, region, os, metric, device, dt, hour;

CREATE OR REPLACE VIEW rollup_1d AS SELECT *, "sum" / "count" AS avg FROM read_parquet('rollup_1d/*/*/*.parquet', hive_partitioning = true, hive_types = {'dt': VARCHAR, 'hour': VARCHAR});

CREATE OR REPLACE VIEW rollup_1d_merged AS SELECT window_start, ns, mcis, vm, csp, region, os, metric, device, dt, hour, sum("count") AS "count", sum("sum") AS "sum", min("min") AS "min", max("max") AS "max", arg_min("first", first_ts) AS "first", min(first_ts) AS first_ts, arg_max("last", last_ts) AS "last", max(last_ts) AS last_ts, sum("sum") / sum("count") AS avg FROM read_parquet('rollup_1d/*/*/*.parquet', hive_partitioning = true, hive_types = {'dt': VARCHAR, 'hour': VARCHAR}) GROUP BY window_start, ns, mcis, vm, csp, region, os, metric, device, dt, hour;
