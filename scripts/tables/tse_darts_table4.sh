#!/usr/bin/env bash
# [TSE] Table 4 (NAS-Bench-1Shot1 spaces 1-3, CIFAR-10): DARTS vs TSE-DARTS, 4 seeds each.
# Paper (test %): DARTS 93.33 / 93.37 / 93.35, TSE-DARTS 91.86 / 90.15 / 87.87.
# Cost: 24 searches × 50 epochs; DARTS measured at 36-45 s/epoch on an H100 (≈35 min per run) → ≈14 GPU-hours.
# Needs nasbench_only108.tfrecord (or its `nasrun bench convert` table) for the accuracies.
set -euo pipefail
OUT=${OUT:-multirun/tse_darts_table4}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=darts_nb1shot1,tse_darts_nb1shot1 space=nb1shot1_s1,nb1shot1_s2,nb1shot1_s3 \
    seed=0,1,2,3 hydra.sweep.dir="$OUT" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/tse_darts_table4.yaml"
exit $STATUS
