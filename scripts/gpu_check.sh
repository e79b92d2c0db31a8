#!/usr/bin/env bash
# Everything the fast path needs checked and timed on a GPU, in one go (README "Performance"):
#   1. the CUDA tests (graph-replayed vs eager steps of every method, retraining, checkpoints across paths);
#   2. scripts/bench_search.py at the papers' sizes (table + JSON), then with bf16 and without graphs;
#   3. end-to-end search epochs on CIFAR-sized synthetic data (391 steps) for NB201 darts and the DARTS space,
#      with the per-epoch work (epoch_end_seconds, overhead_seconds) from their metrics and summaries.
# Results go to $OUT (default gpu_out/). Run from the repository root with nasrun importable
# (pip install -e ., or PYTHONPATH=src plus hydra-core/omegaconf/rich installed).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}src
PY=${PY:-python3}
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv > "$OUT/gpu.txt" 2>&1
$PY -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" >> "$OUT/gpu.txt"

$PY -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"

$PY scripts/bench_search.py --device cuda --json "$OUT/bench.json" 2>&1 | tee "$OUT/bench.log"
$PY scripts/bench_search.py --device cuda --amp --json "$OUT/bench_amp.json" \
    --rows nb201:darts darts:darts retrain 2>&1 | tee -a "$OUT/bench.log"
$PY scripts/bench_search.py --device cuda --no-graphs --json "$OUT/bench_nographs.json" \
    --rows nb201:darts darts:darts 2>&1 | tee -a "$OUT/bench.log"

e2e() {  # name, overrides...: two epochs on 50k CIFAR-sized synthetic images (25k/25k split, 391 steps at batch 64)
    local name=$1; shift
    $PY -m nasrun.cli search dataset=synthetic dataset.synthetic.n_train=50000 dataset.synthetic.image_size=32 \
        dataset.synthetic.num_classes=10 trainer.epochs=2 trainer.progress=false benchmark=none \
        "hydra.run.dir=$OUT/e2e_$name" "$@" > "$OUT/e2e_$name.log" 2>&1
    $PY - "$OUT/e2e_$name" <<'EOF' | tee -a "$OUT/e2e.txt"
import json, sys
run = sys.argv[1]
lines = [json.loads(x) for x in open(f"{run}/metrics.jsonl")]
s = json.load(open(f"{run}/summary.json"))
print(run, [(r["seconds"], r["epoch_end_seconds"], r["images_per_s"]) for r in lines],
      "search_s", s["search_seconds"], "overhead_s", s["overhead_seconds"], "peak_MB", s["peak_memory_mb"])
EOF
}
e2e nb201_darts
e2e nb201_darts_hessian diagnostics.hessian_every=1
e2e darts_space space=darts +experiment=darts_v1_cifar10 dataset=synthetic trainer.epochs=2
echo "results in $OUT"
