#!/usr/bin/env bash
# Overload through `npm start`: a role with CONNECTION LIMIT 20, LEASE_LIMIT=18, 200 concurrent
# clients on /api/pitches/trending for $DURATION seconds, with the coordinator on and then off.
# Prints requests, non-2xx responses and the role's peak connections from pg_stat_activity.
# Needs wrk (Debian package) and the local Postgres; run from the repository root.
set -euo pipefail
export PATH="$PWD/node_modules/.bin:$PATH"
DURATION=${DURATION:-10}
PORT=${PORT:-8791}
ROLE=leasegate_app
ADMIN=(psql -h 127.0.0.1 -U postgres -d postgres -v ON_ERROR_STOP=1 -q)

"${ADMIN[@]}" <<SQL
DO \$\$BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = '$ROLE') THEN
    CREATE ROLE $ROLE LOGIN PASSWORD 'leasegate' CONNECTION LIMIT 20;
  END IF;
END\$\$;
ALTER ROLE $ROLE CONNECTION LIMIT 20;
SQL
DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres node -e '
  const postgres = (await import("postgres")).default;
  const { migrate, seed } = await import("./src/db/schema.ts");
  const sql = postgres(process.env.DATABASE_URL, { onnotice() {} });
  await migrate(sql); await seed(sql); await sql.end();' --input-type=module
"${ADMIN[@]}" -c "GRANT USAGE ON SCHEMA public TO $ROLE; GRANT SELECT, INSERT, UPDATE ON pitches TO $ROLE;"

run() {
  local mode=$1
  PORT=$PORT DATABASE_URL=postgres://$ROLE:leasegate@127.0.0.1:5432/postgres LEASE_LIMIT=18 LEASE_WAIT_MS=10000 \
    COORDINATOR=$mode setsid npm start >"/tmp/leasegate-overload-$mode.log" 2>&1 &
  local pid=$!
  for _ in $(seq 60); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && break; sleep 0.5; done
  bench/sample-connections.sh $ROLE $((DURATION + 2)) >"/tmp/leasegate-peak-$mode.txt" &
  local sampler=$!
  local out
  out=$(wrk -t2 -c200 -d"${DURATION}s" --timeout 15s "http://127.0.0.1:$PORT/api/pitches/trending")
  wait $sampler
  kill -- -"$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  local total non2xx rps
  total=$(grep -oE '[0-9]+ requests in' <<<"$out" | grep -oE '^[0-9]+')
  non2xx=$(grep -oE 'Non-2xx or 3xx responses: [0-9]+' <<<"$out" | grep -oE '[0-9]+$' || echo 0)
  rps=$(grep -oE 'Requests/sec: +[0-9.]+' <<<"$out" | grep -oE '[0-9.]+$')
  printf '| %-4s | %6s | %7s | %8s | %4s |\n' "$mode" "$total" "${non2xx:-0}" "$rps" "$(cat /tmp/leasegate-peak-$mode.txt)"
}

echo "| coordinator | requests | non-2xx | req/s | peak connections (limit 20) |"
echo "|---|---|---|---|---|"
run on
run off
