#!/usr/bin/env bash
# [PT] Table 2 (DARTS space, CIFAR-10): DARTS+PT and SDARTS-RS+PT searched with 4 seeds (the same search settings,
# darts_pt_darts: PT's selection with 5 tuning epochs between edge decisions), each derived cell retrained with the
# DARTS protocol; the average and the best of the 4 retrained test errors beside the paper's (2.61 ± 0.08 / 2.48,
# 2.54 ± 0.10 / 2.44). The magnitude rows are α's argmax replayed on the same supernets (nasrun select) and SGAS
# (criterion 1) searched with its own preset, all retrained. SGAS+PT is not run: SGAS decides its edges during the
# search, and PT would have to make each of those decisions (nasrun's pt selector runs after a search).
# Cost: 12 searches × 50 epochs (+ PT's tuning epochs) + 20 retrains × 600 epochs; `DRY=1` prints the plan.
# Usage: scripts/tables/darts_pt_table2.sh [overrides, e.g. selector.proj_intv=1]; SEEDS=0 one seed; METHODS=sdarts_rs
# one +PT row (and SGAS=0 leaves SGAS out); RETRAIN="..." overrides of the retrain step alone.
set -euo pipefail
OUT=${OUT:-multirun/darts_pt_table2}
SEEDS=${SEEDS:-0,1,2,3}
METHODS=${METHODS:-darts,sdarts_rs}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=darts_pt_darts method="$METHODS" seed="$SEEDS" hydra.sweep.dir="$OUT/search" \
    "${LAUNCH[@]}" "${SEARCH[@]}"
# SGAS's own preset: the selector keys of the PT sweep's overrides are not its own
sgas=()
for arg in "${SEARCH[@]}"; do [[ "$arg" == selector.* ]] || sgas+=("$arg"); done
[ "${SGAS:-1}" = 0 ] || run nasrun search -m +experiment=sgas_darts seed="$SEEDS" hydra.sweep.dir="$OUT/sgas" \
    "${LAUNCH[@]}" "${sgas[@]}"
if [ -n "${DRY:-}" ]; then
    echo "would replay selector=argmax on each DARTS and SDARTS-RS run with nasrun select (seconds each)"
else
    runs=$(finished_runs "$OUT/search")
    [ -z "$runs" ] || run nasrun select -m run="$runs" selector=argmax hydra.sweep.dir="$OUT/argmax" "${BENCH[@]}" \
        "${LAUNCH[@]}"
fi
retrain "$OUT" "$OUT/retrain" retrain=darts seed=0  # the searches and the argmax replays
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/darts_pt_table2.yaml"
exit $STATUS
