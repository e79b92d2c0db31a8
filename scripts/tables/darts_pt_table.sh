#!/usr/bin/env bash
# [PT] §5.2 / Fig. 4 and §6 (NAS-Bench-201, CIFAR-10): DARTS+PT and DARTS+PT (fix α), 4 seeds each; the paper
# finds fix-α better than DARTS+PT on NB201.
# Cost: 100 supernet epochs + 25 tuning epochs with 6 projections per run; ≈3 GPU-hours per run on an H100.
set -euo pipefail
OUT=${OUT:-multirun/darts_pt_table}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=darts_pt_nb201,fixed_alpha_pt_nb201 seed=0,1,2,3 hydra.sweep.dir="$OUT" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/darts_pt_table.yaml"
exit $STATUS
