#!/usr/bin/env bash
# The Compose stack's one-shot bootstrap (`docker compose --profile train up -d`, service `bootstrap`, training image):
# what the scorer needs before it can score, in the order `streamscore demo` does it. Each step whose output is
# already there is skipped, so running it again (every `up` with the profile) changes nothing.
#
#   1. history      BOOTSTRAP_HISTORY_DAYS (37) days of the synthetic world → TRAIN_HISTORY_DIR (Parquet)
#   2. features     the offline sources from that history → FEAST_DATA_DIR   (again when the history is newer)
#   3. apply        the Feast definitions → FEAST_REGISTRY_PATH                (always: idempotent)
#   4. materialize  the batch views and the history's real-time view → Redis  (always: Redis keeps nothing)
#   5. champion     `train --config v1` unless the registry has a champion (the first passing version becomes it)
#   6. challenger   `train --config v1_lite` unless it has a challenger; a refusal by the gate is reported and the
#                   scorer serves the champion alone
#
# Paths and addresses come from the environment docker-compose.yml sets (TRAIN_…, FEAST_…, REGISTRY_…, REDIS_…).
set -euo pipefail

history_dir="${TRAIN_HISTORY_DIR:?set TRAIN_HISTORY_DIR}"
features_dir="${FEAST_DATA_DIR:?set FEAST_DATA_DIR}"
days="${BOOTSTRAP_HISTORY_DAYS:-37}"

step() { printf 'bootstrap: %s\n' "$*"; }

if [[ -f "$history_dir/transactions.parquet" && -f "$history_dir/labels.parquet" ]]; then
  step "history: kept ($history_dir)"
else
  step "history: $days days → $history_dir"
  streamscore produce --history "$days" --out "$history_dir"
fi

# account_state.parquet is the last file `features batch` writes.
if [[ -f "$features_dir/account_state.parquet" && "$features_dir/account_state.parquet" -nt "$history_dir/transactions.parquet" ]]; then
  step "offline features: kept ($features_dir)"
else
  step "offline features → $features_dir"
  streamscore features batch --history "$history_dir" --out "$features_dir"
fi

step "features apply"
streamscore features apply
step "features materialize (batch views and the history's real-time view)"
streamscore features materialize --realtime

# "alias version" of the registered model, one per line (nothing when no version is registered yet).
aliases="$(python -c 'from streamscore.registry import Registry
for alias, version in sorted(Registry().aliases().items()):
    print(alias, version)')"
version_of() { awk -v alias="$1" '$1 == alias { print $2 }' <<<"$aliases"; }

if [[ -n "$(version_of champion)" ]]; then
  step "champion: kept (version $(version_of champion))"
else
  step "train champion (v1)"
  streamscore train --config v1
fi

if [[ -n "$(version_of challenger)" ]]; then
  step "challenger: kept (version $(version_of challenger))"
elif TRAIN_CHAMPION_TOLERANCE="${BOOTSTRAP_CHALLENGER_TOLERANCE:-0.1}" streamscore train --config v1_lite; then
  step "challenger: registered"
else
  step "challenger: refused by the evaluation gate (above); the scorer serves the champion alone"
fi
step "done"
