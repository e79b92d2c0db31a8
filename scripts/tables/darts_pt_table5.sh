#!/usr/bin/env bash
# [PT] Table 5 (ImageNet, mobile setting): the DARTS+PT cell of the DARTS space retrained on ImageNet with DARTS's
# protocol ("we strictly follow the training protocols ... of DARTS": retrain=imagenet, C=48, 14 cells, 250 epochs,
# batch 128, lr 0.1); paper: 25.5 % top-1 / 8.0 % top-5 error, 4.6M params (DARTS's own cell: 26.7 / 8.7, from the
# DARTS paper). The genotype is Table 4's (scripts/tables/darts_pt_table4.sh, T4=its folder): the DARTS+PT search
# whose CIFAR-10 retrain has the lowest test error. Needs ImageNet as train/ and val/ class folders
# (RETRAIN="dataset.root=...", README "ImageNet"). ARGMAX=1 also retrains the best argmax replay (our DARTS row).
# Cost: 1 retrain × 250 ImageNet epochs (DRY=1 prints the estimate); data parallel: README "More than one GPU".
# Usage: scripts/tables/darts_pt_table5.sh [launcher overrides]; RETRAIN="dataset.root=... retrain.batch_size=..."
set -euo pipefail
OUT=${OUT:-multirun/darts_pt_table5}
T4=${T4:-multirun/darts_pt_table4}
source "$(dirname "$0")/_common.sh" "$@"
SELECTORS=pt
[ -z "${ARGMAX:-}" ] || SELECTORS=pt,argmax
if [ -n "${DRY:-}" ]; then
    echo "(the genotype: Table 4's best DARTS+PT retrain under $T4/darts/retrain; DRY=1 darts_pt_table4.sh for its cost)"
    run nasrun eval -m mode=retrain space=darts_7op dataset=imagenet retrain=imagenet genotype="${SELECTORS//,/_best,}_best" \
        seed=0 "${RETRAIN_ARGS[@]}" hydra.sweep.dir="$OUT/retrain" "${LAUNCH[@]}"
elif [ ! -d "$T4/darts/retrain" ]; then
    echo "darts_pt_table5.sh: $T4/darts/retrain does not exist; run scripts/tables/darts_pt_table4.sh first" \
        "(or set T4=its folder)" >&2
    exit 2
else
    MATCH="method.name=darts selector.name=$SELECTORS" retrain_best "$T4/darts/retrain" "$OUT/retrain" \
        dataset=imagenet retrain=imagenet seed=0
fi
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/darts_pt_table5.yaml"
exit $STATUS
