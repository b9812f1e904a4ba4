#!/usr/bin/env bash
# Stops the daemons tests/slurm/start-cluster.sh started (by their pid files); keeps the logs.
set -euo pipefail
DIR=${OPENSEEK_SLURM_DIR:-/tmp/openseek-slurm}
for daemon in slurmd slurmctld munged; do
  pidfile=$DIR/run/$daemon.pid
  if [ -s "$pidfile" ] && kill -0 "$(cat "$pidfile")" 2>/dev/null; then
    pid=$(cat "$pidfile"); kill "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
  rm -f "$pidfile"
done
