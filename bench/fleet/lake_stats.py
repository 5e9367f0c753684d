"""Counts one fleet run's raw samples in a local copy of the lake with DuckDB: rows, distinct samples, publish-to-lake latency (for `damselfly-bench fleet`).

Usage: lake_stats.py RAW_DIR FIRST_SEEN_CSV. The CSV maps each downloaded file (path) to the
wall-clock ms its object was first listed in S3 (seen_ms). A sample's latency is seen_ms minus its
ts (the simulator stamps an interval's samples with the interval's start, when its publishing
begins). Samples of VMs named probe-* (the alarm probes) are left out. Prints one JSON object.
"""

import glob
import json
import sys

import duckdb

raw, seen_csv = sys.argv[1], sys.argv[2]
out = {"files": 0, "rows": 0, "distinct": 0, "unmatched": 0, "p50_ms": None, "p99_ms": None, "max_ms": None}
if glob.glob(f"{raw}/**/*.parquet", recursive=True):
    con = duckdb.connect()
    con.execute(
        f"CREATE TABLE seen AS SELECT * FROM read_csv('{seen_csv}', header = true, "
        "columns = {'path': 'VARCHAR', 'seen_ms': 'BIGINT'})"
    )
    row = con.execute(
        f"""
        WITH r AS (
            SELECT vm, metric, coalesce(device, '') AS device, epoch_ms(ts) AS ts, filename
            FROM read_parquet('{raw}/**/*.parquet', filename = true, hive_partitioning = false)
            WHERE vm NOT LIKE 'probe-%'
        )
        SELECT count(DISTINCT r.filename), count(*), count(DISTINCT (vm, metric, device, ts)),
               count(*) FILTER (WHERE s.seen_ms IS NULL),
               quantile_disc(s.seen_ms - r.ts, 0.5), quantile_disc(s.seen_ms - r.ts, 0.99),
               max(s.seen_ms - r.ts)
        FROM r LEFT JOIN seen s ON r.filename = s.path
        """
    ).fetchone()
    out = dict(zip(["files", "rows", "distinct", "unmatched", "p50_ms", "p99_ms", "max_ms"], row))
print(json.dumps(out))
