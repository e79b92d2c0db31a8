#!/usr/bin/env bash
# [TSE] Table 1 (NAS-Bench-201, CIFAR-10): TSE-DARTS, DARTS-V1, SPOS (nasrun's RSPS: random sampling, random
# search) and GDAS, 4 seeds each, benchmark test accuracy. Paper (test %): TSE-DARTS 92.66 (0.00); DARTS 65.38 (7.84)
# (its all-skip collapse scores 54.30); SPOS 91.05 (0.66); GDAS 93.23 (0.58). ENAS: no nasrun method.
# Cost: 8 searches × 50 epochs + 8 × 250 (RSPS, GDAS: the NB201 paper's settings); `DRY=1` prints the plan.
# Usage: scripts/tables/tse_darts_table1.sh [overrides, e.g. hydra/launcher=slurm benchmark.path=~/nb201.json]
set -euo pipefail
OUT=${OUT:-multirun/tse_darts_table1}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=tse_darts_nb201,darts_v1_nb201,rsps_nb201,gdas_nb201 seed=0,1,2,3 hydra.sweep.dir="$OUT" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/tse_darts_table1.yaml"
exit $STATUS
