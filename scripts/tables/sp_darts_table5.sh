#!/usr/bin/env bash
# [SP] Table V (RobustDARTS S1-S4 on CIFAR-10, CIFAR-100 and SVHN): "running SP-DARTS four times with different
# values of t_sp (4e-4, 5e-4, 6e-4, 7e-4) on each search space for each dataset and pick the finalnet" by the search's
# validation accuracy: the reference's valid_acc is the supernet at t_sp/10 ('supernet monitor').
# SEEDS=0,1 repeats the four-temperature sweep per seed; the pick is then the best of 4 × seeds per space and dataset.
# Retrain each picked genotype with `nasrun eval genotype=RUN mode=retrain retrain=robust_small` (CIFAR-100, SVHN)
# or the DARTS protocol (CIFAR-10). Cost: 48 runs × 50 epochs at batch 128 (≈1 GPU-hour each, not yet measured).
set -euo pipefail
OUT=${OUT:-multirun/sp_darts_table5}
source "$(dirname "$0")/_common.sh" "$@"
SEEDS=${SEEDS:-0}
DATASETS=${DATASETS:-cifar10,cifar100,svhn}
run nasrun search -m +experiment=sp_darts_s1,sp_darts_s2,sp_darts_s3,sp_darts_s4 method.t_sp=4e-4,5e-4,6e-4,7e-4 \
  dataset="$DATASETS" seed="$SEEDS" hydra.sweep.dir="$OUT" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun report "$OUT" --protocol best-of-n --pool method.t_sp --select-by "supernet monitor"
exit $STATUS
