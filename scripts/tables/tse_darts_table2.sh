#!/usr/bin/env bash
# [TSE] Table 2 (DARTS space, CIFAR-10) with the paper's protocol (§3): each method searched 4 times, every result
# retrained once (20 cells, the DARTS protocol), and the best of the four retrained with 3 more seeds, both with 20
# cells (retrain=darts) and with 8 (retrain=tse_8layer): mean (std) test error of those 3, beside the paper's. Rows:
# TSE-DARTS, TSE-DARTS-20 (20-cell search), DARTS (1st) and DARTS-20 (first order, 20-cell search). TSE-DrNAS and
# TSE-PDARTS are "not run": nasrun's TSE estimator is built on DARTS's step alone (tse_darts), not on DrNAS's or
# P-DARTS's; DARTS (2nd), DrNAS, PC-DARTS, PDARTS and iDARTS are those papers' numbers.
# Cost: 16 searches × 50 epochs + 16 first-round retrains + 4 × 3 × (20- and 8-cell) retrains of 600 epochs;
# `DRY=1` prints the plan. Usage: scripts/tables/tse_darts_table2.sh [overrides]; RETRAIN="..." for the retrains.
set -euo pipefail
OUT=${OUT:-multirun/tse_darts_table2}
SEEDS=${SEEDS:-0,1,2,3}  # the searches per method (the paper: 4)
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=tse_darts_darts,tse_darts_darts20,darts_v1_cifar10 seed="$SEEDS" \
    hydra.sweep.dir="$OUT/search/8_and_20" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun search -m +experiment=darts_v1_cifar10 space.layers=20 seed="$SEEDS" \
    hydra.sweep.dir="$OUT/search/darts20" "${LAUNCH[@]}" "${SEARCH[@]}"
retrain "$OUT/search" "$OUT/round1" retrain=darts seed=0
retrain_best "$OUT/round1" "$OUT/final" retrain=darts,tse_8layer seed=1,2,3
run nasrun report "$OUT/final" --paper "$(dirname "$0")/ref/tse_darts_table2.yaml"
exit $STATUS
