#!/usr/bin/env bash
# [SS] Table 2 (NAS-Bench-201, CIFAR-10), 5 seeds: SS-DARTS, EX-DARTS, DARTS-ES, and DARTS+ (sc_2, rt_10)
# replayed on the SS-DARTS runs ("DARTS+ and SS-DARTS are evaluated in the same runs").
# Paper (test %): SS-DARTS 94.01 ± 0.29, EX-DARTS 92.97 ± 0.82, DARTS-ES 88.23 ± 11.40, DARTS+ sc_2 93.49 ± 0.63.
# Cost: 15 searches × 50 epochs (≈1-2 GPU-hours each; DARTS-ES adds a Hessian every 2 epochs).
set -euo pipefail
OUT=${OUT:-multirun/ss_darts_table2}
source "$(dirname "$0")/_common.sh" "$@"
run nasrun search -m +experiment=ss_darts_nb201,ex_darts_nb201,darts_es_nb201 seed=0,1,2,3,4 hydra.sweep.dir="$OUT" "${LAUNCH[@]}" "${SEARCH[@]}"
# DARTS+ replayed on every finished SS-DARTS run, as a sweep over the runs (so the launcher applies here too)
runs=$(grep -l "name: selective_stop" "$OUT"/[0-9]*/config.yaml 2>/dev/null | xargs -r -n1 dirname | paste -sd, - || true)
if [ -n "$runs" ]; then
    run nasrun select -m run="$runs" selector=argmax stop=darts_plus stop.criterion=sc stop.k=2 \
        hydra.sweep.dir="$OUT/darts_plus_sc2" "${LAUNCH[@]}"
    run nasrun select -m run="$runs" selector=argmax stop=darts_plus stop.criterion=rt stop.k=10 \
        hydra.sweep.dir="$OUT/darts_plus_rt10" "${LAUNCH[@]}"
fi
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/ss_darts_table2.yaml"
exit $STATUS
