#!/usr/bin/env bash
# [PT] Table 4 (CIFAR-10 test error %): DARTS (α's argmax), DARTS+PT and DARTS+PT (fix α) on NAS-Bench-201 and on the
# DARTS space; §5.2 / Fig. 4 and §6 discuss it (fix α beats DARTS+PT on NB201). 4 seeds each. The DARTS column is the
# magnitude selection of the same DARTS supernets, replayed with `nasrun select selector=argmax`; on the DARTS space
# every genotype is then retrained (DARTS protocol) and the retrained error compared. SPACES=nb201 or SPACES=darts
# runs one row; SEEDS=0 one seed.
# Cost: NB201 8 searches × 100 epochs + 25 tuning epochs (≈3 GPU-hours each); DARTS space 8 searches × 50 epochs + PT
# tuning + 12 retrains; `DRY=1` prints the plan (its retrain count leaves out the 4 argmax replays' retrains).
# Usage: scripts/tables/darts_pt_table4.sh [overrides, e.g. selector.proj_intv=1]; RETRAIN="..." for the retrains.
set -euo pipefail
OUT=${OUT:-multirun/darts_pt_table4}
SEEDS=${SEEDS:-0,1,2,3}
SPACES=${SPACES:-nb201,darts}
source "$(dirname "$0")/_common.sh" "$@"

argmax_of() {  # argmax_of SWEEP_DIR OUT_DIR: α's argmax replayed on each finished DARTS (not fix-α) run of a sweep
    local runs
    if [ -n "${DRY:-}" ]; then
        echo "would replay selector=argmax on each DARTS run of $1 with nasrun select (seconds each)"
        return 0
    fi
    runs=$(MATCH="method.name=darts" finished_runs "$1")
    [ -z "$runs" ] || run nasrun select -m run="$runs" selector=argmax hydra.sweep.dir="$2" "${BENCH[@]}" "${LAUNCH[@]}"
}

if [[ ",$SPACES," == *,nb201,* ]]; then
    run nasrun search -m +experiment=darts_pt_nb201,fixed_alpha_pt_nb201 seed="$SEEDS" hydra.sweep.dir="$OUT/nb201" \
        "${LAUNCH[@]}" "${SEARCH[@]}"
    argmax_of "$OUT/nb201" "$OUT/nb201_argmax"
fi
if [[ ",$SPACES," == *,darts,* ]]; then
    run nasrun search -m +experiment=darts_pt_darts method=darts,fixed_alpha seed="$SEEDS" \
        hydra.sweep.dir="$OUT/darts/search" "${LAUNCH[@]}" "${SEARCH[@]}"
    argmax_of "$OUT/darts/search" "$OUT/darts/argmax"
    retrain "$OUT/darts" "$OUT/darts/retrain" retrain=darts seed=0  # the searches and the argmax replays
fi
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/darts_pt_table4.yaml"
exit $STATUS
