#!/usr/bin/env bash
# [AMD] Table 1 (CIFAR-10): Amended-DARTS searched in S1 (DARTS space, fixed edges) and S2 (20 unshared cells,
# {skip, sep3}), 3 seeds each; every searched genotype retrained with the DARTS protocol (C=36, 20 cells, 600 epochs;
# S2's 20 cells as searched), and the paper's test error and params beside ours (S1 2.81 ± 0.21 %, S2 2.60 ± 0.15 %).
# Cost: 6 searches × 100 epochs (≈300 s/epoch, rough) + 6 retrains × 600 epochs; `DRY=1` prints the plan.
# Usage: scripts/tables/amended_darts_table1.sh [overrides, e.g. hydra/launcher=slurm dataset.root=~/data]
#        RETRAIN="retrain.epochs=..." adds overrides of the retrain step alone.
set -euo pipefail
OUT=${OUT:-multirun/amended_darts_table1}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=amended_darts_s1,amended_darts_s2 seed=0,1,2 hydra.sweep.dir="$OUT/search" "${LAUNCH[@]}" "${SEARCH[@]}"
retrain "$OUT/search" "$OUT/retrain" retrain=darts seed=0
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/amended_darts_table1.yaml"
exit $STATUS
