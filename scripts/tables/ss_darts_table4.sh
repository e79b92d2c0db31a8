#!/usr/bin/env bash
# [SS] Table 4 (DARTS space, CIFAR-10): one SS-DARTS search yields four genotypes (SepConv3/5, DilConv3/5);
# each is retrained with the DARTS protocol. Paper: 2.54-2.73 % test error.
# Cost: one 75-epoch DARTS-space search (≈312 s/epoch on an H100 → ≈6.5 h) + 4 retrains (≈45 h each as implemented).
set -euo pipefail
OUT=${OUT:-multirun/ss_darts_table4}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=ss_darts_darts hydra.sweep.dir="$OUT/search" "${LAUNCH[@]}" "${SEARCH[@]}"
# the four genotypes of the one search, retrained as one sweep (each on the launcher given)
genotypes=$(ls "$OUT"/search/0/genotypes/*.json 2>/dev/null | paste -sd, - || true)
if [ -n "$genotypes" ]; then
    run nasrun eval -m space=darts_7op mode=retrain genotype="$genotypes" hydra.sweep.dir="$OUT/retrain" "${LAUNCH[@]}"
fi
run nasrun report "$OUT/retrain"
exit $STATUS
