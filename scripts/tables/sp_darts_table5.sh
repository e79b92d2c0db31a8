#!/usr/bin/env bash
# [SP] Table V (RobustDARTS S1-S4 on CIFAR-10, CIFAR-100 and SVHN): "running SP-DARTS four times with different
# values of t_sp (4e-4, 5e-4, 6e-4, 7e-4) on each search space for each dataset and pick the finalnet" by the search's
# validation accuracy: the reference's valid_acc is the supernet at t_sp/10 ('supernet monitor'). The pick of each
# space and dataset is retrained (SDARTS's evaluation, as RobustDARTS: the DARTS protocol on CIFAR-10,
# retrain=robust_small on CIFAR-100 and SVHN) and compared with the paper's SP-DARTS column.
# SEEDS=0,1 repeats the four-temperature sweep per seed (the pick is then the best of 4 × seeds); SPACES=darts_s2 or
# DATASETS=cifar10 runs a part. Cost: 48 runs × 50 epochs at batch 128 (≈1 GPU-hour each, not yet measured) + 12
# retrains; `DRY=1` prints the plan.
set -euo pipefail
OUT=${OUT:-multirun/sp_darts_table5}
source "$(dirname "$0")/_common.sh" "$@"
SEEDS=${SEEDS:-0}
SPACES=${SPACES:-darts_s1,darts_s2,darts_s3,darts_s4}
DATASETS=${DATASETS:-cifar10,cifar100,svhn}
for dataset in ${DATASETS//,/ }; do
    group=small && [ "$dataset" = cifar10 ] && group=c10
    run nasrun search -m +experiment="${SPACES//darts_/sp_darts_}" method.t_sp=4e-4,5e-4,6e-4,7e-4 dataset="$dataset" \
        seed="$SEEDS" hydra.sweep.dir="$OUT/search/$group/$dataset" "${LAUNCH[@]}" "${SEARCH[@]}"
done
export PICK_BY="supernet monitor" POOL="method.t_sp"
[[ ",$DATASETS," != *,cifar10,* ]] || retrain_picked "$OUT/search/c10" "$OUT/retrain" retrain=darts seed=0
[[ "$DATASETS" = cifar10 ]] || retrain_picked "$OUT/search/small" "$OUT/retrain" retrain=robust_small seed=0
run nasrun report "$OUT/search" --protocol best-of-n --pool method.t_sp --select-by "supernet monitor" -o "$OUT/picks"
run nasrun report "$OUT/retrain" --paper "$(dirname "$0")/ref/sp_darts_table5.yaml"
exit $STATUS
