#!/usr/bin/env bash
# [SS] Table 4 (DARTS space, CIFAR-10): SS-DARTS searched 5 times (the paper's repeats); each search yields four
# genotypes (SepConv3/5, DilConv3/5 stops), each retrained with the DARTS protocol (C=36, 20 cells, 600 epochs),
# and the paper's test error and params beside ours (2.54-2.73 %).
# Cost: 5 searches × 75 epochs (≈300 s/epoch, rough) + 20 retrains × 600 epochs; `DRY=1` prints the plan.
# Usage: scripts/tables/ss_darts_table4.sh [overrides]; SEEDS=0,1 fewer repeats; RETRAIN="..." adds overrides of the
# retrain step alone.
set -euo pipefail
OUT=${OUT:-multirun/ss_darts_table4}
SEEDS=${SEEDS:-0,1,2,3,4}  # the paper's 5 repeats
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=ss_darts_darts seed="$SEEDS" hydra.sweep.dir="$OUT/search" "${LAUNCH[@]}" "${SEARCH[@]}"
EACH_GENOTYPE=4 retrain "$OUT/search" "$OUT/retrain" retrain=darts seed=0
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/ss_darts_table4.yaml"
exit $STATUS
