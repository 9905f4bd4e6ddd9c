#!/usr/bin/env bash
# Overload through `npm start`: a role with CONNECTION LIMIT 20, 200 concurrent clients on
# /api/pitches/trending for $DURATION seconds, side by side:
#   off            no coordinator, straight to Postgres
#   pgbouncer      no coordinator, through PgBouncer (transaction mode, pool 18, max_client_conn 1000)
#   on             leasegate (LEASE_LIMIT=18), straight to Postgres
#   on+pgbouncer   leasegate in front of PgBouncer (LEASE_LIMIT=$PGB_LEASE_LIMIT, default 150; and 54)
#   on-block, on+pgbouncer-block   the same with the per-isolate lease block (LEASE_BLOCK=$BLOCK)
#   floor1, floor2 no coordinator, through PgBouncer, plus 1 or 2 no-op Durable Object calls per
#                  request (bench/p3-floor-worker.ts): what per-request coordinator calls cost in
#                  this one-thread shape, whatever they decide
# then P4 (unless P4=0): leasegate with a 2 s deadline and a short queue under the same overload (bench/load.ts).
# Prints a table: requests, 2xx, errors, goodput, p50/p99 and the role's peak connections from
# pg_stat_activity; with RESULTS_DIR set, also writes p3.json and p4.json there (npm run bench).
# Needs wrk and pgbouncer (Debian packages) and the local Postgres; run from the repository root.
set -euo pipefail
export PATH="$PWD/node_modules/.bin:$PATH"
DURATION=${DURATION:-10}
PORT=${PORT:-8832}
PGB_PORT=${PGB_PORT:-6430}
# PgBouncer alone next to the setups compared with it (and every other round in reverse order).
MODES=${MODES:-"off on on-block pgbouncer on+pgbouncer-54 floor1 floor2 on+pgbouncer on+pgbouncer-block"}
ROLE=${ROLE:-leasegate_app}
# leasegate in front of PgBouncer: PgBouncer caps the server connections, so the lease limit only
# bounds the client side: how many callers PgBouncer itself queues (without deadlines); the rest
# wait in leasegate's queue with deadlines. on+pgbouncer uses PGB_LEASE_LIMIT, on+pgbouncer-54 uses 54.
PGB_LEASE_LIMIT=${PGB_LEASE_LIMIT:-150}
# The per-isolate lease block (LEASE_BLOCK) of the *-block setups: leases the isolate keeps and hands
# to its own next requests without a coordinator call.
BLOCK=${BLOCK:-18}
# wrangler dev attaches a local trace collector (a streaming tail Worker) to the Worker and its
# Durable Objects by default, on the same workerd thread: every request and every Durable Object
# call also produces trace events for it, which cost about as much as the call. Production has
# no such collector unless one is configured, so these servers run without it.
export X_LOCAL_OBSERVABILITY=${X_LOCAL_OBSERVABILITY:-false}
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
  const { migrate, seed } = await import("./examples/pitches/src/schema.ts");
  const sql = postgres(process.env.DATABASE_URL, { onnotice() {} });
  await migrate(sql); await seed(sql); await sql.end();' --input-type=module
"${ADMIN[@]}" -c "GRANT USAGE ON SCHEMA public TO $ROLE; GRANT SELECT, INSERT, UPDATE ON pitches TO $ROLE;"

# PgBouncer as an unprivileged user (it refuses to run as root), config in a temp dir.
PGB_DIR=$(mktemp -d /tmp/leasegate-pgbouncer.XXXXXX)
cat >"$PGB_DIR/pgbouncer.ini" <<INI
[databases]
postgres = host=127.0.0.1 port=5432 dbname=postgres
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGB_PORT
unix_socket_dir = $PGB_DIR
auth_type = trust
auth_file = $PGB_DIR/users.txt
pool_mode = transaction
default_pool_size = 18
max_client_conn = 1000
# Leased connections start with the deadline's settings (DB_STATEMENT_TIMEOUT=startup): PgBouncer
# refuses unknown startup parameters unless listed here, and drops the listed ones. In transaction
# mode the deadline holds through the cancel request (forwarded) and a transaction's SET LOCAL.
ignore_startup_parameters = extra_float_digits,options,statement_timeout,idle_in_transaction_session_timeout,client_connection_check_interval
logfile = $PGB_DIR/pgbouncer.log
pidfile = $PGB_DIR/pgbouncer.pid
INI
echo "\"$ROLE\" \"leasegate\"" >"$PGB_DIR/users.txt"
as_user() { if [ "$(id -u)" = 0 ]; then chown -R postgres "$PGB_DIR"; runuser -u postgres -- "$@"; else "$@"; fi; }
# PgBouncer keeps its server connections open between runs: it runs only for the runs through it.
start_pgbouncer() { [ -f "$PGB_DIR/pgbouncer.pid" ] || as_user pgbouncer -d "$PGB_DIR/pgbouncer.ini"; sleep 0.3; }
kill_pgbouncer() {
  [ -f "$PGB_DIR/pgbouncer.pid" ] && kill "$(cat "$PGB_DIR/pgbouncer.pid")" 2>/dev/null || true
  for _ in $(seq 50); do [ -f "$PGB_DIR/pgbouncer.pid" ] || break; sleep 0.1; done
}
stop_pgbouncer() { kill_pgbouncer; rm -rf "$PGB_DIR"; }
# Each run starts with none of the role's connections left over from the previous one.
wait_idle() {
  for _ in $(seq 100); do
    [ "$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT count(*) FROM pg_stat_activity WHERE usename = '$ROLE'")" = 0 ] && return
    sleep 0.1
  done
}
trap stop_pgbouncer EXIT

DIRECT=postgres://$ROLE:leasegate@127.0.0.1:5432/postgres
BOUNCED=postgres://$ROLE:leasegate@127.0.0.1:$PGB_PORT/postgres

# Waits until the server on $PORT answers its health check; names its log when it never does.
wait_healthy() {
  for _ in $(seq 120); do curl -sf "http://127.0.0.1:$PORT/health" >/dev/null && return; sleep 0.5; done
  echo "server did not start; see /tmp/leasegate-overload-$PORT.log" >&2; return 1
}
# start_server COORDINATOR DATABASE_URL [VAR=value...]: npm start in the background; sets $server.
start_server() {
  local mode=$1 url=$2; shift 2
  # A pool of its own per server: the coordinator's state persists under .wrangler/, and a killed
  # server's in-flight leases would otherwise stay held (correctly) until their TTL.
  env LEASE_LIMIT=18 LEASE_POOL="bench-$RANDOM$RANDOM" DEBUG_TOKEN=$STATS_TOKEN "$@" PORT=$PORT DATABASE_URL=$url COORDINATOR=$mode \
    setsid bash -c 'cd "$0" && exec npm start' "$SERVER_DIR" >"/tmp/leasegate-overload-$PORT.log" 2>&1 &
  server=$!
  wait_healthy
}
# The floor Worker (bench/p3-floor-worker.ts) under wrangler dev itself: the schema is already seeded.
start_floor() {
  local calls=$1 url=$2
  CLOUDFLARE_HYPERDRIVE_LOCAL_CONNECTION_STRING_HYPERDRIVE=$url setsid wrangler dev --config bench/wrangler.p3-floor.toml \
    --ip 127.0.0.1 --port "$PORT" --show-interactive-dev-session=false --var "FLOOR_CALLS:$calls" \
    >"/tmp/leasegate-overload-$PORT.log" 2>&1 &
  server=$!
  wait_healthy
}
# The coordinator's counters at the end of a run ("granted released"; empty without a coordinator):
# its calls per 2xx, where the block's hand-ons show as the calls it saved.
STATS_TOKEN=bench-$RANDOM$RANDOM
coordinator_calls() {
  curl -sf -H "Authorization: Bearer $STATS_TOKEN" "http://127.0.0.1:$PORT/__coordinator/stats" 2>/dev/null |
    node -e 'let s = ""; process.stdin.on("data", (d) => (s += d)).on("end", () => { try { const c = JSON.parse(s).counters; console.log(c.granted + c.timedOut + c.rejected + c.cancelled, c.released); } catch {} })' || true
}
stop_server() { kill -- -"$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; sleep 0.5; }

# CPU time, in clock ticks: the whole machine's busy time (/proc/stat: all but idle and iowait), and
# that of every process in one session (the server: wrangler, its proxy and the workerd running the
# Worker and the Durable Object). Per 2xx they are steadier than goodput on a shared machine.
machine_busy() { awk '$1 == "cpu" { print $2 + $3 + $4 + $7 + $8 + $9; exit }' /proc/stat; }
session_cpu() {
  local sid=$1 total=0 pid
  for pid in $(ps -o pid= -s "$sid" 2>/dev/null); do
    total=$((total + $(awk '{ print $14 + $15 }' "/proc/$pid/stat" 2>/dev/null || echo 0)))
  done
  echo "$total"
}

# Every thread of the server's session with its CPU ticks ("pid/tid ticks"): under wrangler dev one
# workerd thread runs the Worker and the Durable Object, and it is the server's bottleneck. The
# fields after the command name (which may hold spaces) are counted from its closing parenthesis.
thread_ticks() {
  local pid task
  for pid in $(ps -o pid= -s "$1" 2>/dev/null); do
    for task in /proc/"$pid"/task/*; do
      echo "$pid/${task##*/} $(sed 's/.*) //' "$task/stat" 2>/dev/null | awk '{ print $12 + $13 }')"
    done
  done | sort
}
# The busiest thread's ticks between two thread_ticks listings.
busiest_thread() { join "$1" "$2" | awk '{ d = $3 - $2; if (d > max) max = d } END { print max + 0 }'; }

# wrk's latency lines ("50%  123.45ms") in ms.
ms_of() { awk -v p="$1" '$1 == p { v = $2; if (v ~ /us$/) { sub(/us$/, "", v); v /= 1000 } else if (v ~ /ms$/) { sub(/ms$/, "", v) } else if (v ~ /s$/) { sub(/s$/, "", v); v *= 1000 } printf "%.0f", v }'; }

json="["
run() {
  local name=$1 mode=$2 url=$3 limit=${4:-18}
  shift $(($# < 4 ? $# : 4))
  wait_idle
  case $mode in
    floor*) start_floor "${mode#floor}" "$url" ;;
    *) start_server "$mode" "$url" LEASE_WAIT_MS=10000 LEASE_LIMIT="$limit" "$@" ;;
  esac
  bench/sample-connections.sh $ROLE $((DURATION + 2)) >"/tmp/leasegate-peak-$PORT.txt" &
  local sampler=$!
  local out machine0 server0 machine1 server1 threads0 threads1
  threads0=$(mktemp); threads1=$(mktemp)
  thread_ticks "$server" >"$threads0"
  machine0=$(machine_busy); server0=$(session_cpu "$server")
  out=$(wrk -t2 -c200 -d"${DURATION}s" --timeout 15s --latency "http://127.0.0.1:$PORT/api/pitches/trending")
  machine1=$(machine_busy); server1=$(session_cpu "$server")
  thread_ticks "$server" >"$threads1"
  local calls=""
  case $mode in floor* | off) ;; *) calls=$(coordinator_calls) ;; esac
  local busiest
  busiest=$(busiest_thread "$threads0" "$threads1")
  rm -f "$threads0" "$threads1"
  wait $sampler
  stop_server
  local total non2xx sockerr ok p50 p99 peak goodput errors
  total=$(grep -oE '[0-9]+ requests in' <<<"$out" | grep -oE '^[0-9]+')
  non2xx=$(grep -oE 'Non-2xx or 3xx responses: [0-9]+' <<<"$out" | grep -oE '[0-9]+$' || echo 0)
  sockerr=$({ grep -oE 'Socket errors: .*' <<<"$out" || true; } | { grep -oE '[0-9]+' || true; } | awk '{s+=$1} END {print s+0}')
  ok=$((total - non2xx))
  errors=$((non2xx + sockerr))
  p50=$(ms_of 50% <<<"$out"); p99=$(ms_of 99% <<<"$out")
  peak=$(cat "/tmp/leasegate-peak-$PORT.txt")
  goodput=$(awk -v ok=$ok -v d=$DURATION 'BEGIN { printf "%.1f", ok / d }')
  local tick=$(getconf CLK_TCK) cpu_machine cpu_server cpu_thread thread_busy
  cpu_machine=$(awk -v t=$((machine1 - machine0)) -v ok=$ok -v hz=$tick 'BEGIN { printf "%.2f", ok ? t * 1000 / hz / ok : 0 }')
  cpu_server=$(awk -v t=$((server1 - server0)) -v ok=$ok -v hz=$tick 'BEGIN { printf "%.2f", ok ? t * 1000 / hz / ok : 0 }')
  cpu_thread=$(awk -v t="$busiest" -v ok=$ok -v hz=$tick 'BEGIN { printf "%.2f", ok ? t * 1000 / hz / ok : 0 }')
  thread_busy=$(awk -v t="$busiest" -v d=$DURATION -v hz=$tick 'BEGIN { printf "%.0f", t * 100 / hz / d }')
  # Acquires and releases the coordinator answered, per 2xx (its own counters; renewals not counted).
  local per_ok="-"
  [ -z "$calls" ] || per_ok=$(awk -v a="${calls% *}" -v r="${calls#* }" -v ok=$ok 'BEGIN { printf "%.2f+%.2f", ok ? a / ok : 0, ok ? r / ok : 0 }')
  printf '| %-12s | %6s | %6s | %6s | %7s | %6s ms | %6s ms | %4s | %5s | %5s | %5s (%s %%) | %s |\n' "$name" "$total" "$ok" "$errors" "$goodput" "$p50" "$p99" "$peak" "$cpu_machine" "$cpu_server" "$cpu_thread" "$thread_busy" "$per_ok"
  [ "$json" = "[" ] || json+=","
  json+="{\"mode\":\"$name\",\"requests\":$total,\"ok\":$ok,\"errors\":$errors,\"goodput\":$goodput,\"p50\":\"$p50 ms\",\"p99\":\"$p99 ms\",\"peak\":$peak,\"cpuMs\":$cpu_machine,\"serverCpuMs\":$cpu_server,\"threadCpuMs\":$cpu_thread,\"threadBusy\":$thread_busy,\"coordinatorCalls\":\"$per_ok\"}"
}

echo "| setup | requests | 2xx | errors | goodput (2xx/s) | p50 | p99 | peak connections (limit 20) | CPU ms per 2xx, machine | server | busiest thread (busy) | acquires+releases per 2xx |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|"
# ROUNDS > 1 runs the setups in turn that many times (alternating, so load changes hit all alike),
# every other round in reverse order (what one setup leaves behind does not always fall on the same next one).
# A mode ending in @before runs the same setup from the checkout in $BEFORE_DIR (another worktree,
# say): the code before a change and after it, in one run.
SERVER_DIR=$PWD
LABEL=""
run_mode() {
  local mode=$1
  case $mode in
    *@before) SERVER_DIR=${BEFORE_DIR:?"$mode needs BEFORE_DIR"} LABEL=" (before)" run_mode "${mode%@before}"; return ;;
    off) kill_pgbouncer; run off off "$DIRECT" ;;
    pgbouncer) start_pgbouncer; run pgbouncer off "$BOUNCED" ;;
    floor1) start_pgbouncer; run "pgbouncer, 1 no-op call" floor1 "$BOUNCED" ;;
    floor2) start_pgbouncer; run "pgbouncer, 2 no-op calls" floor2 "$BOUNCED" ;;
    on) kill_pgbouncer; run "leasegate$LABEL" on "$DIRECT" ;;
    on+pgbouncer) start_pgbouncer; run "leasegate($PGB_LEASE_LIMIT)+pgbouncer$LABEL" on "$BOUNCED" "$PGB_LEASE_LIMIT" ;;
    on+pgbouncer-54) start_pgbouncer; run "leasegate(54)+pgbouncer$LABEL" on "$BOUNCED" 54 ;;
    on-block) kill_pgbouncer; run "leasegate, block $BLOCK$LABEL" on "$DIRECT" 18 LEASE_BLOCK="$BLOCK" ;;
    on+pgbouncer-block) start_pgbouncer; run "leasegate(54, block $BLOCK)+pgbouncer$LABEL" on "$BOUNCED" 54 LEASE_BLOCK="$BLOCK" ;;
  esac
}
for round in $(seq "${ROUNDS:-1}"); do
modes=$MODES
[ $((round % 2)) -eq 1 ] || modes=$(echo "$MODES" | tr ' ' '\n' | tac | tr '\n' ' ')
for mode in $modes; do run_mode "$mode"; done
done
json+="]"

# P4: a 2 s deadline and a queue of 40 under 200 clients; the service time is measured unloaded first.
# P4=0 skips it (P3 alone).
[ "${P4:-1}" != 0 ] || { [ -z "${RESULTS_DIR:-}" ] || echo "$json" >"$RESULTS_DIR/p3.json"; exit 0; }
# P4_LOCAL_SHED lists the LEASE_LOCAL_SHED settings to run side by side (rounds alternate their
# order, ROUNDS of them); the first setting's last run is the one written to p4.json.
P4_LOCAL_SHED=${P4_LOCAL_SHED:-on}
p4_first=""
kill_pgbouncer
for round in $(seq "${P4_ROUNDS:-1}"); do
  settings=$P4_LOCAL_SHED
  [ $((round % 2)) -eq 1 ] || settings=$(echo "$P4_LOCAL_SHED" | tr ' ' '\n' | tac | tr '\n' ' ')
  for shed in $settings; do
    wait_idle
    start_server on "$DIRECT" LEASE_WAIT_MS=2000 LEASE_MAX_QUEUE=40 LEASE_LOCAL_SHED="$shed"
    service=$(for _ in $(seq 20); do curl -s -o /dev/null -w '%{http_code} %{time_total}\n' "http://127.0.0.1:$PORT/api/pitches/trending"; done | awk '$1 == 200 {print $2}' | sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int(NR/2)+1] * 1000}')
    p4=$(node bench/load.ts "http://127.0.0.1:$PORT/api/pitches/trending" 200 "$DURATION")
    stop_server
    p4=${p4%\}},\"serviceMs\":$service,\"deadlineMs\":2000,\"localShed\":\"$shed\"\}
    echo "P4 (2 s deadline, queue 40, 200 clients, LEASE_LOCAL_SHED=$shed): $p4"
    [ "$shed" != "${P4_LOCAL_SHED%% *}" ] || p4_first=$p4
  done
done
p4=$p4_first
if [ -n "${RESULTS_DIR:-}" ]; then
  echo "$json" >"$RESULTS_DIR/p3.json"
  echo "$p4" >"$RESULTS_DIR/p4.json"
fi
