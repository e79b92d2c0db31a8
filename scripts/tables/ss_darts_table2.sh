#!/usr/bin/env bash
# [SS] Tables 1-2 (NAS-Bench-201, CIFAR-10), 5 seeds: SS-DARTS, EX-DARTS, DARTS-ES, and DARTS+ (sc_2, rt_10)
# replayed on the SS-DARTS runs ("DARTS+ and SS-DARTS are evaluated in the same runs"); DrNAS and GAEA (bilevel, ERM)
# on standard-201 as the paper runs them (the none op kept; DrNAS with batch 256 and 50 epochs, GAEA with batch 160
# and 50 epochs, also 25, and its own no-none space), with DARTS+ (sc_2) and selective stop (SS-GAEA: the 3×3 conv's
# magnitude, the 1×1 conv's for ERM) replayed on GAEA's 50-epoch runs.
# Paper (test %): SS-DARTS 94.01 ± 0.29, EX-DARTS 92.97 ± 0.82, DARTS-ES 88.23 ± 11.40, DARTS+ sc_2 93.49 ± 0.63,
# DrNAS 93.74 ± 0.03, SS-GAEA-bilevel 93.48 ± 1.20. Not run: EX-GAEA (the paper does not give the rates it exchanged
# in GAEA, whose α step is exponentiated gradient). Table 1's baselines (RSPS, DARTS-V1/V2, GDAS: NB201's own rows
# there) run too (TABLE1=0 leaves them out); SETN, ENAS and the non-gradient rows have no nasrun method.
# Cost: 70 searches × 25-250 epochs (≈159 GPU-hours, GDAS 250 epochs; DARTS-ES adds a Hessian every 2 epochs); `DRY=1` prints it.
# Usage: scripts/tables/ss_darts_table2.sh [overrides, e.g. benchmark.path=~/nb201.pth]; SEEDS=0 runs one seed.
set -euo pipefail
OUT=${OUT:-multirun/ss_darts_table2}
SEEDS=${SEEDS:-0,1,2,3,4}
source "$(dirname "$0")/_common.sh" "$@"
STANDARD='space.ops=[none,skip_connect,nor_conv_1x1,nor_conv_3x3,avg_pool_3x3]'
run nasrun search -m +experiment=ss_darts_nb201,ex_darts_nb201,darts_es_nb201 seed="$SEEDS" hydra.sweep.dir="$OUT" \
    "${LAUNCH[@]}" "${SEARCH[@]}"
run nasrun search -m +experiment=drnas_nb201 trainer.epochs=50 trainer.batch_size=256 seed="$SEEDS" \
    hydra.sweep.dir="$OUT/drnas" "${LAUNCH[@]}" "${SEARCH[@]}"
if [ "${TABLE1:-1}" != 0 ]; then  # Table 1's gradient baselines (NB201's own settings)
    run nasrun search -m +experiment=rsps_nb201,darts_v1_nb201,darts_v2_nb201,gdas_nb201 seed="$SEEDS" \
        hydra.sweep.dir="$OUT/table1" "${LAUNCH[@]}" "${SEARCH[@]}"
fi
for epochs in 50 25; do
    run nasrun search -m +experiment=gaea_nb201_bilevel,gaea_nb201_erm "$STANDARD" trainer.batch_size=160 \
        trainer.epochs=$epochs seed="$SEEDS" hydra.sweep.dir="$OUT/gaea_standard$epochs" "${LAUNCH[@]}" "${SEARCH[@]}"
done
run nasrun search -m +experiment=gaea_nb201_bilevel,gaea_nb201_erm seed="$SEEDS" hydra.sweep.dir="$OUT/gaea_own" \
    "${LAUNCH[@]}" "${SEARCH[@]}"

if [ -n "${DRY:-}" ]; then
    echo "would replay DARTS+ (sc_2, rt_10) on each SS-DARTS run, DARTS+ (sc_2) and selective stop on each 50-epoch" \
        "GAEA run, with nasrun select (seconds each)"
else
    # DARTS+ on the SS-DARTS runs; DARTS+ (sc_2) and selective stop on GAEA's 50-epoch standard-201 runs
    runs=$(MATCH="method.name=darts selector.name=selective_stop" finished_runs "$OUT")
    if [ -n "$runs" ]; then
        run nasrun select -m run="$runs" selector=argmax stop=darts_plus stop.criterion=sc stop.k=2 \
            hydra.sweep.dir="$OUT/darts_plus_sc2" "${BENCH[@]}" "${LAUNCH[@]}"
        run nasrun select -m run="$runs" selector=argmax stop=darts_plus stop.criterion=rt stop.k=10 \
            hydra.sweep.dir="$OUT/darts_plus_rt10" "${BENCH[@]}" "${LAUNCH[@]}"
    fi
    gaea50=$(finished_runs "$OUT/gaea_standard50")
    [ -z "$gaea50" ] || run nasrun select -m run="$gaea50" selector=argmax stop=darts_plus stop.criterion=sc \
        stop.k=2 hydra.sweep.dir="$OUT/gaea_sc2" "${BENCH[@]}" "${LAUNCH[@]}"
    for form in "false nor_conv_3x3" "true nor_conv_1x1"; do
        read -r single target <<< "$form"
        runs=$(MATCH="method.single_level=$single" finished_runs "$OUT/gaea_standard50")
        [ -z "$runs" ] || run nasrun select -m run="$runs" selector=selective_stop "selector.targets=[$target]" \
            hydra.sweep.dir="$OUT/ss_gaea_$target" "${BENCH[@]}" "${LAUNCH[@]}"
    done
fi
run nasrun report "$OUT" --paper "$(dirname "$0")/ref/ss_darts_table2.yaml"
exit $STATUS
