#!/usr/bin/env bash
# [SS] Table 4 (DARTS space, CIFAR-10): one SS-DARTS search yields four genotypes (SepConv3/5, DilConv3/5);
# each is retrained with the DARTS protocol. Paper: 2.54-2.73 % test error.
# Cost: one 75-epoch DARTS-space search (≈312 s/epoch on an H100 → ≈6.5 h) + 4 retrains (≈45 h each as implemented).
set -euo pipefail
OUT=${OUT:-multirun/ss_darts_table4}
nasrun search +experiment=ss_darts_darts hydra.run.dir="$OUT/search" "$@"
for g in "$OUT"/search/genotypes/*.json; do
    nasrun eval space=darts_7op genotype="$g" mode=retrain hydra.run.dir="$OUT/retrain/$(basename "$g" .json)"
done
nasrun report "$OUT/retrain"
