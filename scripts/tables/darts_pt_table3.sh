#!/usr/bin/env bash
# [PT] Table 3 (RobustDARTS S1-S4 × CIFAR-10, CIFAR-100, SVHN; test error % after retraining): per space and dataset
# a DARTS supernet with α's argmax (column "DARTS"), the same search with perturbation-based selection (DARTS+PT) and
# PT on a supernet trained without α (fix α), all with the DARTS-PT DARTS-space search settings (+experiment=
# darts_pt_darts: 50 epochs, batch 64, then PT's tuning epochs). Retraining follows RobustDARTS: the DARTS protocol on
# CIFAR-10 (C=36, 20 cells), retrain=robust_small on CIFAR-100 and SVHN (C=16, 8 cells). One run per cell (the paper
# gives no std); SPACES=darts_s2 or DATASETS=cifar10 runs a part. selector.* overrides go to the PT searches only.
# Cost: 36 searches (PT's add 81 tuning epochs each, not counted) + 36 retrains; `DRY=1` prints the plan.
# Usage: scripts/tables/darts_pt_table3.sh [overrides]; RETRAIN="..." adds overrides of the retrain step alone.
set -euo pipefail
OUT=${OUT:-multirun/darts_pt_table3}
SPACES=${SPACES:-darts_s1,darts_s2,darts_s3,darts_s4}
DATASETS=${DATASETS:-cifar10,cifar100,svhn}
source "$(dirname "$0")/_common.sh" "$@"
PLAIN=() && PT=()  # selector.* overrides go to the PT searches alone (argmax has no such keys)
for arg in "${SEARCH[@]}"; do
    case "$arg" in selector.*) PT+=("$arg") ;; *) PLAIN+=("$arg") ;; esac
done
for dataset in ${DATASETS//,/ }; do
    group=small && [ "$dataset" = cifar10 ] && group=c10
    run nasrun search -m +experiment=darts_pt_darts space="$SPACES" dataset="$dataset" selector=argmax \
        hydra.sweep.dir="$OUT/search/$group/$dataset/darts" "${LAUNCH[@]}" "${PLAIN[@]}"
    run nasrun search -m +experiment=darts_pt_darts space="$SPACES" dataset="$dataset" \
        hydra.sweep.dir="$OUT/search/$group/$dataset/darts_pt" "${LAUNCH[@]}" "${PLAIN[@]}" "${PT[@]}"
    run nasrun search -m +experiment=darts_pt_darts space="$SPACES" dataset="$dataset" method=fixed_alpha \
        hydra.sweep.dir="$OUT/search/$group/$dataset/fix_alpha" "${LAUNCH[@]}" "${PLAIN[@]}" "${PT[@]}"
done
[[ ",$DATASETS," != *,cifar10,* ]] || retrain "$OUT/search/c10" "$OUT/retrain" retrain=darts seed=0
[[ "$DATASETS" = cifar10 ]] || retrain "$OUT/search/small" "$OUT/retrain" retrain=robust_small seed=0
run nasrun report "$OUT/retrain" --paper "$(dirname "$0")/ref/darts_pt_table3.yaml"
exit $STATUS
