#!/usr/bin/env bash
# [SP] Table I (NAS-Bench-201): SP-DARTS on CIFAR-10 and CIFAR-100 settings, 4 seeds each, benchmark accuracy
# on all three NB201 datasets. Cost: 8 searches × 50 epochs at batch 256 (≈1 GPU-hour per run).
set -euo pipefail
OUT=${OUT:-multirun/sp_darts_table1}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=sp_darts_nb201_c10,sp_darts_nb201_c100 seed=0,1,2,3 hydra.sweep.dir="$OUT" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/sp_darts_table1.yaml"
exit $STATUS
