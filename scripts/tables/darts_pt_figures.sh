#!/usr/bin/env bash
# [PT] Figs. 4 and 8 (NAS-Bench-201): the performance trajectory. DARTS and DARTS with α fixed are searched keeping
# the supernet every EVERY epochs (trainer.keep_snapshots), and each kept supernet is then selected from with
# `nasrun select snapshot=E`: PT on both (DARTS+PT, Fig. 4; DARTS+PT (fix α), Fig. 8) and α's argmax on DARTS's (the
# magnitude curve that degrades). `nasrun report` draws plots/trajectory.png: benchmark test accuracy against the
# supernet's epoch, one curve per selection, one panel per NB201 dataset. Searched on DATASETS (the figures' three
# panels: cifar10,cifar100,imagenet16_120), SEEDS seeds.
# Cost: 100-epoch searches, then PT's 25 tuning epochs on each of the 100/EVERY kept supernets; `DRY=1` prints the
# searches' share. Usage: scripts/tables/darts_pt_figures.sh [overrides; selector.* go to the PT replays alone].
set -euo pipefail
OUT=${OUT:-multirun/darts_pt_figures}
SEEDS=${SEEDS:-0,1,2,3}
EVERY=${EVERY:-10}
DATASETS=${DATASETS:-cifar10,cifar100,imagenet16_120}
source "$(dirname "$0")/_common.sh" "$@"
searches=()
picks=()
for arg in "${SEARCH[@]}"; do
    case "$arg" in selector.*) picks+=("$arg") ;; *) searches+=("$arg") ;; esac
done
# the searches select with argmax (seconds): PT runs on every kept supernet afterwards, the last one included
run nasrun search -m +experiment=darts_pt_nb201,fixed_alpha_pt_nb201 selector=argmax trainer.keep_snapshots="$EVERY" \
    dataset="$DATASETS" seed="$SEEDS" hydra.sweep.dir="$OUT/search" "${LAUNCH[@]}" "${searches[@]}"
if [ -n "${DRY:-}" ]; then
    echo "would replay PT (and argmax on the DARTS runs) on each kept supernet with nasrun select snapshot=E" \
         "(PT: 25 tuning epochs each)"
else
    runs=$(finished_runs "$OUT/search")
    epochs=$(for d in ${runs//,/ }; do ls "$d/snapshots" 2>/dev/null; done | sed -n 's/^epoch_0*\([0-9][0-9]*\)\.pt$/\1/p' \
             | sort -un | paste -sd, - || true)
    darts=$(MATCH="method.name=darts" finished_runs "$OUT/search")
    if [ -z "$epochs" ]; then
        echo "darts_pt_figures.sh: no kept supernet under $OUT/search" >&2
        STATUS=1
    else
        run nasrun select -m run="$runs" snapshot="$epochs" selector=pt hydra.sweep.dir="$OUT/pt" "${picks[@]}" \
            "${BENCH[@]}" "${LAUNCH[@]}"
        [ -z "$darts" ] || run nasrun select -m run="$darts" snapshot="$epochs" selector=argmax \
            hydra.sweep.dir="$OUT/argmax" "${BENCH[@]}" "${LAUNCH[@]}"
    fi
fi
run nasrun report "$OUT"
exit $STATUS
