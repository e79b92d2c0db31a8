#!/usr/bin/env bash
# [SS] Table 2 (NAS-Bench-201, CIFAR-10), 5 seeds: SS-DARTS, EX-DARTS, DARTS-ES, and DARTS+ (sc_2, rt_10)
# replayed on the SS-DARTS runs ("DARTS+ and SS-DARTS are evaluated in the same runs").
# Paper (test %): SS-DARTS 94.01 ± 0.29, EX-DARTS 92.97 ± 0.82, DARTS-ES 88.23 ± 11.40, DARTS+ sc_2 93.49 ± 0.63.
# Cost: 15 searches × 50 epochs (≈1-2 GPU-hours each; DARTS-ES adds a Hessian every 2 epochs).
set -euo pipefail
OUT=${OUT:-multirun/ss_darts_table2}
nasrun search -m +experiment=ss_darts_nb201,ex_darts_nb201,darts_es_nb201 seed=0,1,2,3,4 hydra.sweep.dir="$OUT" "$@"
for run in $(grep -l "name: selective_stop" "$OUT"/*/config.yaml | xargs -n1 dirname); do
    nasrun select run="$run" selector=argmax stop=darts_plus stop.criterion=sc stop.k=2 hydra.run.dir="$OUT/darts_plus_sc2/$(basename "$run")"
    nasrun select run="$run" selector=argmax stop=darts_plus stop.criterion=rt stop.k=10 hydra.run.dir="$OUT/darts_plus_rt10/$(basename "$run")"
done
nasrun report "$OUT"
