#!/usr/bin/env bash
# [TSE] Figures 1-5: per-epoch curves of DARTS against TSE-DARTS, the dominant Hessian eigenvalue of α on
# (diagnostics.hessian_every=HESSIAN_EVERY, default 2 as RobustDARTS), drawn by `nasrun report` (plots/all_groups.png:
# benchmark accuracy, λmax, skip count, depth side by side; plots/<group>_cell.png: the cells).
#   Fig. 5 (NAS-Bench-201: λmax rises for both, accuracy falls for DARTS only)  → $OUT/fig5_nb201/plots/
#   Fig. 2 (NB101-3: accuracy and depth, λmax)                                  → $OUT/fig2_nb101_3/plots/
#   Fig. 3a (RobustDARTS S2: λmax of DARTS rises, TSE-DARTS's does not)         → $OUT/fig3a_s2/plots/
#   Figs. 1, 3b, 4 (DARTS space: depth and skip counts of 8- and 20-cell searches, the best cells) come from
#   scripts/tables/tse_darts_table2.sh's searches (T2=its folder): drawn into $OUT/fig1_3b_4/plots/ when they exist.
# Cost: 24 searches (NB201 105 s/epoch measured, NB-1Shot1 40 s, the DARTS space rough) plus the Hessians; `DRY=1`.
# Usage: scripts/tables/tse_darts_figures.sh [overrides]; SEEDS=0 or HESSIAN_EVERY=5 for a cheaper look.
set -euo pipefail
OUT=${OUT:-multirun/tse_darts_figures}
T2=${T2:-multirun/tse_darts_table2}
SEEDS=${SEEDS:-0,1,2,3}
HESSIAN_EVERY=${HESSIAN_EVERY:-2}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=darts_v1_nb201,tse_darts_nb201 seed="$SEEDS" diagnostics.hessian_every="$HESSIAN_EVERY" \
    hydra.sweep.dir="$OUT/fig5_nb201" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun search -m +experiment=darts_nb1shot1,tse_darts_nb1shot1 space=nb1shot1_s3 seed="$SEEDS" \
    diagnostics.hessian_every="$HESSIAN_EVERY" hydra.sweep.dir="$OUT/fig2_nb101_3" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun search -m +experiment=darts_v1_cifar10,tse_darts_darts space=darts_s2 seed="$SEEDS" \
    diagnostics.hessian_every="$HESSIAN_EVERY" hydra.sweep.dir="$OUT/fig3a_s2" "${LAUNCH[@]}" "${SEARCH[@]}"
for fig in fig5_nb201 fig2_nb101_3 fig3a_s2; do
    run nasrun report "$OUT/$fig"
done
if [ -d "$T2/search" ] || [ -n "${DRY:-}" ]; then
    run nasrun report "$T2/search" -o "$OUT/fig1_3b_4"
else
    echo "Figs. 1, 3b and 4: run scripts/tables/tse_darts_table2.sh first (or set T2=its folder)"
fi
exit $STATUS
