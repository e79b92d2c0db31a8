#!/usr/bin/env bash
# P-DARTS (Chen et al., ICCV 2019) on the DARTS space, CIFAR-10: three chained stages (5, 11, 17 cells; 8 → 5 → 3 ops
# per edge; skip dropout 0.1 / 0.4 / 0.7), each stage reading the ops the previous one kept, the last deriving the
# genotype with at most 2 skip connections. Paper: 2.50 % test error after retraining
# (`nasrun eval genotype=$OUT/stage3/0 mode=retrain`). Cost: 3 × 25 epochs (not yet measured on a GPU).
set -euo pipefail
OUT=${OUT:-multirun/pdarts_table}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=pdarts_stage1 hydra.sweep.dir="$OUT/stage1" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun search -m +experiment=pdarts_stage2 space.edge_ops_file="$OUT/stage1/0/selection.json" \
    hydra.sweep.dir="$OUT/stage2" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun search -m +experiment=pdarts_stage3 space.edge_ops_file="$OUT/stage2/0/selection.json" \
    hydra.sweep.dir="$OUT/stage3" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun report "$OUT"
exit $STATUS
