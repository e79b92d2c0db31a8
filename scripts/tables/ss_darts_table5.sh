#!/usr/bin/env bash
# [SS] Table 5 (search on CIFAR-10, evaluate on ImageNet, mobile setting): SS-DARTS-SepConv5 and SS-DARTS-DilConv5
# retrained on ImageNet; paper: 24.5 / 26.2 % top-1, 7.4 / 8.3 % top-5, 4.9 / 3.9M params. The genotypes are Table 4's
# (scripts/tables/ss_darts_table4.sh, T4=its folder): per target op, the one of the 5 repeats whose CIFAR-10 retrain
# has the lowest test error (the paper does not say which of its runs it took). Protocol: the paper's evaluations
# follow DrNAS's code, whose ImageNet setting is PC-DARTS's (retrain=imagenet_pcdarts: C=48, 14 cells, batch 1024,
# lr 0.5 linear, 5 warm-up epochs). Needs ImageNet as train/ and val/ class folders (RETRAIN="dataset.root=...",
# README "ImageNet").
# Cost: 2 retrains × 250 ImageNet epochs (days of 8 GPUs each; DRY=1 prints the estimate); run them data parallel
# (hydra/launcher=slurm hydra.launcher.tasks_per_node=8, README "More than one GPU").
# Usage: scripts/tables/ss_darts_table5.sh [launcher overrides]; RETRAIN="dataset.root=... retrain.batch_size=..."
set -euo pipefail
OUT=${OUT:-multirun/ss_darts_table5}
T4=${T4:-multirun/ss_darts_table4}
source "$(dirname "$0")/_common.sh" "$@"
PICKS="search.selection=peak_sep_conv_5x5,peak_dil_conv_5x5"
if [ -n "${DRY:-}" ]; then
    echo "(the genotypes: Table 4's best SepConv5 and DilConv5 retrains under $T4/retrain; DRY=1 ss_darts_table4.sh for its cost)"
    run nasrun eval -m mode=retrain space=darts_7op dataset=imagenet retrain=imagenet_pcdarts \
        genotype=best_sep_conv_5x5,best_dil_conv_5x5 seed=0 "${RETRAIN_ARGS[@]}" hydra.sweep.dir="$OUT/retrain" \
        "${LAUNCH[@]}"
elif [ ! -d "$T4/retrain" ]; then
    echo "ss_darts_table5.sh: $T4/retrain does not exist; run scripts/tables/ss_darts_table4.sh first (or set T4=its folder)" >&2
    exit 2
else
    BY=search.selection MATCH="$PICKS" retrain_best "$T4/retrain" "$OUT/retrain" dataset=imagenet \
        retrain=imagenet_pcdarts seed=0
fi
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/ss_darts_table5.yaml"
exit $STATUS
