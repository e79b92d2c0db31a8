#!/usr/bin/env bash
# [SS] Table 3 (NAS-Bench-201 searched on CIFAR-10): resilience to the weight learning rate. SS-DARTS and DARTS-ES
# searched with a constant weight lr of 0.003, 0.009 and 0.015 (5 seeds each), and DARTS+ (sc_2-4, rt_2-4, rt_10)
# replayed on the SS-DARTS runs ("evaluated in the same runs"); test accuracy on CIFAR-10, CIFAR-100 and
# ImageNet16-120 beside the paper's. The paper's "optimal" row (the best accuracy DARTS ever reached during a run, the
# ceiling of every stop rule) replays selector=oracle_epoch on the same runs, once per dataset (it reads the benchmark:
# give benchmark.path=... unless the file is where nasrun looks). LRS=0.003 or SEEDS=0 runs a part.
# Cost: 30 searches × 50 epochs (NB201, 105 s/epoch measured; DARTS-ES adds a Hessian every 2 epochs) + 105 replays
# (seconds each); `DRY=1` prints the plan.
# Usage: scripts/tables/ss_darts_table3.sh [overrides, e.g. hydra/launcher=slurm benchmark.path=~/nb201.json]
set -euo pipefail
OUT=${OUT:-multirun/ss_darts_table3}
SEEDS=${SEEDS:-0,1,2,3,4}
LRS=${LRS:-0.003,0.009,0.015}
source "$(dirname "$0")/_common.sh" "$@"
for lr in ${LRS//,/ }; do
    run nasrun search -m +experiment=ss_darts_nb201,darts_es_nb201 method.w_lr="$lr" method.w_lr_min="$lr" \
        seed="$SEEDS" hydra.sweep.dir="$OUT/lr_$lr" "${LAUNCH[@]}" "${SEARCH[@]}"
done
# DARTS+ replayed on every finished SS-DARTS run, as sweeps over the runs (so the launcher applies here too)
runs=$(MATCH="selector.name=selective_stop" finished_runs "$OUT")
if [ -n "${DRY:-}" ]; then
    echo "would replay DARTS+ (sc_2-4, rt_2-4, rt_10) and the oracle (3 datasets) on each SS-DARTS run with nasrun" \
        "select (seconds each)"
elif [ -n "$runs" ]; then
    run nasrun select -m run="$runs" selector=argmax stop=darts_plus stop.criterion=sc stop.k=2,3,4 \
        hydra.sweep.dir="$OUT/darts_plus_sc" "${BENCH[@]}" "${LAUNCH[@]}"
    run nasrun select -m run="$runs" selector=argmax stop=darts_plus stop.criterion=rt stop.k=2,3,4,10 \
        hydra.sweep.dir="$OUT/darts_plus_rt" "${BENCH[@]}" "${LAUNCH[@]}"
    if [[ " ${BENCH[*]} " == *" benchmark=none "* ]]; then
        echo "benchmark=none: the optimal row (the oracle replays) needs the benchmark; left out"
    else
        run nasrun select -m run="$runs" selector=oracle_epoch selector.dataset=cifar10,cifar100,ImageNet16-120 \
            hydra.sweep.dir="$OUT/optimal" "${BENCH[@]}" "${LAUNCH[@]}"
    fi
fi
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/ss_darts_table3.yaml"
exit $STATUS
