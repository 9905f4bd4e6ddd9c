#!/usr/bin/env bash
# Samples the connections a role holds, every 20 ms, for $2 seconds; prints the peak.
# usage: sample-connections.sh ROLE SECONDS
# One psql, one backend, one statement: the loop runs inside Postgres (a fresh statistics snapshot
# per sample), so the sampler costs the machine under test next to nothing — a psql process and a
# new backend every 20 ms would take a fifth of a core from what it measures.
role=$1; seconds=$2
psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -Atq -v role="$role" -v seconds="$seconds" 2>&1 <<'SQL' |
SELECT set_config('sample.role', :'role', false), set_config('sample.seconds', :'seconds', false) \gset
DO $$
DECLARE
  peak int := 0;
  n int;
  stop timestamptz := clock_timestamp() + current_setting('sample.seconds')::int * interval '1 second';
BEGIN
  WHILE clock_timestamp() < stop LOOP
    PERFORM pg_stat_clear_snapshot();
    SELECT count(*) INTO n FROM pg_stat_activity WHERE usename = current_setting('sample.role');
    peak := greatest(peak, n);
    PERFORM pg_sleep(0.02);
  END LOOP;
  RAISE NOTICE 'peak %', peak;
END$$;
SQL
  sed -n 's/.*NOTICE:  peak \([0-9]*\).*/\1/p'
