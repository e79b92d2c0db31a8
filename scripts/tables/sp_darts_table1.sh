#!/usr/bin/env bash
# [SP] Table I (NAS-Bench-201, searched on CIFAR-10: first group; on CIFAR-100: second group), 3 seeds ("as with
# NB201, ... three different seeds"), benchmark accuracy on all three NB201 datasets: SP-DARTS with its CIFAR-10 and
# CIFAR-100 settings, and the baselines under SP's own setting ("standard 201": the five ops with none, 50 epochs;
# DrNAS and GAEA from their authors' code): DARTS-V1/V2 (AutoDL, 50 epochs), GDAS (its NB201 setting), DrNAS,
# GAEA bilevel and ERM on the five ops, and GAEA-ERM without none (the paper's parenthesised line); PC-DARTS (second
# group only) with its own optimiser defaults, K=4 and batch 256 on NB201 (the paper does not give its setting).
# ResNet and Optimal are the benchmark's figures.
# Cost: 6 SP-DARTS + 45 baseline searches (GDAS: 250 epochs) ≈ 125 GPU-hours; `DRY=1` prints the plan.
# Usage: scripts/tables/sp_darts_table1.sh [overrides, e.g. benchmark.path=~/nb201.pth]; SEEDS=0 one seed;
# BASELINES=0 the SP-DARTS rows alone.
set -euo pipefail
OUT=${OUT:-multirun/sp_darts_table1}
SEEDS=${SEEDS:-0,1,2}
source "$(dirname "$0")/_common.sh" "$@"
STANDARD='space.ops=[none,skip_connect,nor_conv_1x1,nor_conv_3x3,avg_pool_3x3]'
run nasrun search -m +experiment=sp_darts_nb201_c10,sp_darts_nb201_c100 seed="$SEEDS" hydra.sweep.dir="$OUT" \
    "${LAUNCH[@]}" "${SEARCH[@]}"
if [ "${BASELINES:-1}" != 0 ]; then
    run nasrun search -m +experiment=darts_v1_nb201,darts_v2_nb201,gdas_nb201 dataset=cifar10,cifar100 seed="$SEEDS" \
        hydra.sweep.dir="$OUT/baselines" "${LAUNCH[@]}" "${SEARCH[@]}"
    run nasrun search -m +experiment=drnas_nb201 trainer.epochs=50 dataset=cifar10,cifar100 seed="$SEEDS" \
        hydra.sweep.dir="$OUT/drnas" "${LAUNCH[@]}" "${SEARCH[@]}"
    run nasrun search -m +experiment=gaea_nb201_bilevel,gaea_nb201_erm "$STANDARD" trainer.epochs=50 \
        dataset=cifar10,cifar100 seed="$SEEDS" hydra.sweep.dir="$OUT/gaea" "${LAUNCH[@]}" "${SEARCH[@]}"
    run nasrun search -m +experiment=gaea_nb201_erm trainer.epochs=50 dataset=cifar10,cifar100 seed="$SEEDS" \
        hydra.sweep.dir="$OUT/gaea_erm_no_none" "${LAUNCH[@]}" "${SEARCH[@]}"
    run nasrun search -m space=nb201 method=pc_darts space.partial_channels=4 trainer.epochs=50 trainer.batch_size=256 \
        dataset=cifar100 seed="$SEEDS" hydra.sweep.dir="$OUT/pc_darts" "${LAUNCH[@]}" "${SEARCH[@]}"
fi
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/sp_darts_table1.yaml"
exit $STATUS
