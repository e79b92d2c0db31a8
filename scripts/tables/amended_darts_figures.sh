#!/usr/bin/env bash
# [AMD] Figures 1 and 2, the long runs: Fig. 1, first-order DARTS searched for 200 epochs on the DARTS space (the
# `none` operator's mean weight in the normal cell climbs towards 0.97 and the genotype fills with skip-connect; the
# report's "operation magnitudes" and "skip connections" panels, and the final cell); Fig. 2, Amended-DARTS with the
# amending coefficient η = 0 (DARTS), 0.1 and 1 searched for 500 epochs with §4.1.1's setting (C=16, batch 96), one
# cell drawing per η. Each figure folder gets `nasrun report`'s plots (plots/all_groups.png, plots/*_cell.png).
# Not drawn: Fig. 1's re-training accuracy per search epoch (a retrain of every epoch's genotype).
# Cost: 200 + 3 × 500 search epochs per seed (DRY=1 prints the estimate); SEEDS=0,1 for more seeds.
# Usage: scripts/tables/amended_darts_figures.sh [overrides]; FIG1_EPOCHS / FIG2_EPOCHS shorten the runs.
set -euo pipefail
OUT=${OUT:-multirun/amended_darts_figures}
SEEDS=${SEEDS:-0}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=darts_v1_cifar10 trainer.epochs="${FIG1_EPOCHS:-200}" seed="$SEEDS" \
    hydra.sweep.dir="$OUT/fig1_darts" "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun search -m +experiment=darts_v1_cifar10 method=amended_darts method.eta=0,0.1,1 space.C=16 \
    trainer.batch_size=96 trainer.epochs="${FIG2_EPOCHS:-500}" seed="$SEEDS" hydra.sweep.dir="$OUT/fig2_eta" \
    "${LAUNCH[@]}" "${SEARCH[@]}"
for fig in fig1_darts fig2_eta; do
    run nasrun report "$OUT/$fig"
done
exit $STATUS
