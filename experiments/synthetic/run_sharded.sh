#!/usr/bin/env bash
# Train experiments.synthetic as N processes that share one GPU and the result caches (shard=i/N), then write the
# tables and plots once from the caches. Finished runs are cached, so re-running resumes where it stopped.
# Usage: bash experiments/synthetic/run_sharded.sh N [hydra overrides ...]      e.g. 14 scale=gpu
# SHARD_TIME_LIMIT=SECONDS stops every shard after that long (the runs it finished are kept).
set -uo pipefail
n=${1:?usage: run_sharded.sh N [hydra overrides ...]}
shift
logs=outputs/synthetic/logs
mkdir -p "$logs"
pids=()
for ((i = 0; i < n; i++)); do
  timeout "${SHARD_TIME_LIMIT:-0}" python -m experiments.synthetic "$@" "shard=$i/$n" progress=false \
    >"$logs/shard$i.log" 2>&1 &
  pids+=($!)
done
failed=0
for i in "${!pids[@]}"; do
  wait "${pids[$i]}" || { failed=1; echo "shard $i/$n stopped early: see $logs/shard$i.log" >&2; }
done
python -m experiments.synthetic "$@" report_only=true
exit $failed
