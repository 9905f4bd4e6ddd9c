#!/usr/bin/env bash
# Samples the connections a role holds, every 20 ms, for $2 seconds; prints the peak.
# usage: sample-connections.sh ROLE SECONDS
role=$1; seconds=$2; peak=0
end=$(( $(date +%s) + seconds ))
while [ "$(date +%s)" -lt "$end" ]; do
  n=$(psql -h 127.0.0.1 -U postgres -d postgres -Atc "SELECT count(*) FROM pg_stat_activity WHERE usename = '$role'")
  [ "$n" -gt "$peak" ] && peak=$n
  sleep 0.02
done
echo "$peak"
