#!/usr/bin/env bash
# [TSE] Table 1 / Table 3 (NAS-Bench-201, CIFAR-10): TSE-DARTS vs DARTS-V1, 4 seeds each, benchmark accuracy.
# Paper (Table 1, test %): TSE-DARTS 92.66 (0.00); DARTS 65.38 (7.84) (its all-skip collapse scores 54.30).
# Cost: 8 searches × 50 epochs; DARTS-V1 measured at 105 s/epoch on an H100 (≈1.5 h per run) → ≈12 GPU-hours.
# Usage: scripts/tables/tse_darts_table1.sh [overrides, e.g. hydra/launcher=slurm benchmark.path=~/nb201.json]
set -euo pipefail
OUT=${OUT:-multirun/tse_darts_table1}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=tse_darts_nb201,darts_v1_nb201 seed=0,1,2,3 hydra.sweep.dir="$OUT" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/tse_darts_table1.yaml"
exit $STATUS
