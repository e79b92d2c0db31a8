#!/usr/bin/env bash
# [SS] §2's exploratory experiments on NAS-Bench-201 (CIFAR-10), one folder per figure, each drawn by `nasrun report`
# (plots/all_groups.png: benchmark accuracy, supernet accuracy and operation magnitudes per epoch, one curve per
# setting; cells): the DARTS-V1 baseline (Fig. 2a); Exp.1, α frozen for 10 / 20 / 30 warm-up epochs, then 50 joint
# epochs (Fig. 2b-d); Exp.2, α weight decay 0.005 / 0.01 (Fig. 2f-g); Exp.3, 100 warm-up epochs then 50 (Fig. 2e);
# Exp.4, α lr 0.001 / 0.002 / 0.003 (Fig. 3a); Exp.5, EX-DARTS (Fig. 3b, its operation magnitudes Fig. 3d); Exp.6,
# no skip-connect in the space (Fig. 3c); Exp.7, EX-DARTS's weight lr with α lr 0.001 for 500 epochs (Fig. 5);
# Exp.8, DARTS for 500 epochs on NB-1Shot1 spaces 1-3 (Fig. 4). 5 seeds each, as the paper. Not drawn: Fig. 2h (the
# last 50 epochs aligned across runs of different lengths) and Fig. 6 (a benchmark-wide distribution).
# Cost: ≈ 3,400 search epochs per seed (DRY=1 prints the estimate). EXPS="1 6" runs some experiments (0: baseline);
# WARMUPS="10 20" and JOINT=50 set Exp.1's warm-up lengths and the joint epochs after them.
# Usage: scripts/tables/ss_darts_figures.sh [overrides, e.g. benchmark.path=~/nb201.pth]; SEEDS=0 one seed.
set -euo pipefail
OUT=${OUT:-multirun/ss_darts_figures}
SEEDS=${SEEDS:-0,1,2,3,4}
EXPS=${EXPS:-0 1 2 3 4 5 6 7 8}
source "$(dirname "$0")/_common.sh" "$@"
FIGS=()
search() {  # search FOLDER OVERRIDES...: one sweep of the exploratory experiments into $OUT/FOLDER
    local folder=$1
    shift
    [[ " ${FIGS[*]} " == *" ${folder%%/*} "* ]] || FIGS+=("${folder%%/*}")
    run nasrun search -m "$@" seed="$SEEDS" hydra.sweep.dir="$OUT/$folder" "${LAUNCH[@]}" "${SEARCH[@]}"
}
for exp in $EXPS; do
    case $exp in
        0) search fig2a_baseline +experiment=darts_v1_nb201 ;;
        1) for w in ${WARMUPS:-10 20 30}; do
               search "fig2bcd_exp1/warmup_$w" +experiment=darts_v1_nb201 method.arch_start_epoch="$w" \
                   trainer.epochs=$((w + ${JOINT:-50}))
           done ;;
        2) search fig2fg_exp2 +experiment=darts_v1_nb201 method.arch_weight_decay=0.005,0.01 ;;
        3) search fig2e_exp3 +experiment=darts_v1_nb201 method.arch_start_epoch=100 trainer.epochs=150 ;;
        4) search fig3a_exp4 +experiment=darts_v1_nb201 method.arch_lr=0.001,0.002,0.003 ;;
        5) search fig3bd_exp5 +experiment=ex_darts_nb201 ;;
        6) search fig3c_exp6 +experiment=darts_v1_nb201 space=nb201_noskip ;;
        7) search fig5_exp7 +experiment=ex_darts_nb201 method.arch_lr=0.001 trainer.epochs=500 ;;
        8) search fig4_exp8 +experiment=darts_nb1shot1 space=nb1shot1_s1,nb1shot1_s2,nb1shot1_s3 trainer.epochs=500 ;;
        *) echo "EXPS: no experiment $exp (0-8)" >&2; exit 2 ;;
    esac
done
for fig in "${FIGS[@]}"; do
    run nasrun report "$OUT/$fig"
done
exit $STATUS
