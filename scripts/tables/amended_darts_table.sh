#!/usr/bin/env bash
# [AMD] Table 1 (CIFAR-10, S1 2.81 % / S2 2.60 % error after retraining): Amended-DARTS searches, 3 seeds each; retrain each genotype with
# `nasrun eval genotype=RUN mode=retrain` (DARTS protocol, ≈45 h per retrain on one GPU as implemented).
# Cost of the searches: 6 runs × 50 epochs of second-order-cost α steps; ≈4-5 GPU-hours per run.
set -euo pipefail
OUT=${OUT:-multirun/amended_darts_table}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=amended_darts_s1,amended_darts_s2 seed=0,1,2 hydra.sweep.dir="$OUT" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun report "$OUT"
exit $STATUS
