#!/usr/bin/env bash
# [AMD] Table 2 (ILSVRC2012): the S2 genotypes of scripts/tables/amended_darts_table1.sh retrained on ImageNet with
# the paper's protocol (conf/retrain/imagenet_amended.yaml: C=42, 250 epochs, lr 0.5 decayed linearly, wd 3e-5);
# paper: 24.3 % top-1 / 7.4 % top-5 error, 5.5M params. Needs ImageNet as train/ and val/ class folders
# (dataset.root=..., README "ImageNet") and table 1's searches (SEARCHED=their folder, default its OUT/search).
# Cost: 3 retrains × 250 epochs of a batch-1024 ImageNet network (the paper: ≈24 V100-days each); run it data
# parallel (hydra/launcher=slurm hydra.launcher.tasks_per_node=8, README "More than one GPU").
# Usage: scripts/tables/amended_darts_table2.sh [launcher overrides]; RETRAIN="dataset.root=... retrain.epochs=..."
set -euo pipefail
OUT=${OUT:-multirun/amended_darts_table2}
SEARCHED=${SEARCHED:-multirun/amended_darts_table1/search}
source "$(dirname "$0")/_common.sh" "$@"
if [ ! -d "$SEARCHED" ]; then
    if [ -z "${DRY:-}" ]; then
        echo "amended_darts_table2.sh: $SEARCHED does not exist; run scripts/tables/amended_darts_table1.sh first" \
            "(or set SEARCHED=its search folder)" >&2
        exit 2
    fi
    echo "($SEARCHED does not exist yet: planned with table 1's three S2 searches)"
    run nasrun search -m +experiment=amended_darts_s2 seed=0,1,2 hydra.sweep.dir="$SEARCHED" "${SEARCH[@]}"
fi
retrain "$SEARCHED" "$OUT/retrain" space=amended_deep dataset=imagenet retrain=imagenet_amended seed=0
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/amended_darts_table2.yaml"
exit $STATUS
