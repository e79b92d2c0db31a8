# Shared by the table scripts (sourced with the script's arguments, not run on its own).
#
# Arguments: launcher overrides (hydra/launcher=..., hydra.launcher.KEY=...) go to every nasrun command a script
# runs (searches, retrains, selections), so `hydra/launcher=slurm` sends all of them to Slurm; every other
# override goes to the searches. A failed job or sweep does not stop the script (`run`): the later steps and the
# report still run, and the script exits 1 at the end. DETACH=1 runs the whole script in the background (nohup,
# log in $OUT/table.log): it survives a logout, and `nasrun report $OUT` shows what has finished at any time;
# rerunning the script skips finished jobs. Overrides are plain `key=value`, also for keys that only the swept
# presets have (e.g. `scripts/tables/darts_pt_table4.sh selector.proj_intv=1`: nasrun passes them on as ++key=value).
# RETRAIN="key=value ..." gives overrides to the retrain steps alone (retrain, retrain_best, retrain_picked below).
# Benchmark overrides (benchmark=..., benchmark.path=...) go to the searches and to the `nasrun select` replays (BENCH).
LAUNCH=()
SEARCH=()
BENCH=()
read -r -a RETRAIN_ARGS <<< "${RETRAIN:-}"  # RETRAIN="key=value ...": extra overrides of the retrain step alone
NASRUN_PY="$(dirname "$(command -v nasrun)")/python"
[ -x "$NASRUN_PY" ] || NASRUN_PY=python3
for arg in "$@"; do
    case "$arg" in
        hydra/launcher=* | hydra.launcher.*) LAUNCH+=("$arg") ;;
        benchmark=* | benchmark.*) BENCH+=("$arg"); SEARCH+=("$arg") ;;
        *) SEARCH+=("$arg") ;;
    esac
done
STATUS=0

run() {  # run a nasrun command; remember a failure instead of stopping
    "$@" || STATUS=1
}

if [ -n "${DETACH:-}" ] && [ -z "${NASRUN_DETACHED:-}" ]; then
    mkdir -p "$OUT"
    NASRUN_DETACHED=1 OUT="$OUT" nohup "$0" "$@" > "$OUT/table.log" 2>&1 &
    echo "running in the background (pid $!); log: $OUT/table.log; results so far: nasrun report $OUT"
    exit 0
fi

# DRY=1: list every job a script would run (its overrides, epochs and estimated GPU-hours; EPOCH_S=seconds per epoch
# sets your own per-epoch time) and the script's total, and run nothing (nasrun.plan).
if [ -n "${DRY:-}" ]; then
    PLAN_TOTAL=$(mktemp)
    PLAN_SEARCHES=$(mktemp)
    export PLAN_TOTAL PLAN_SEARCHES
    run() {
        "$NASRUN_PY" -m nasrun.plan "$@" || STATUS=1
    }
    trap 'awk "{s += \$1} END {printf \"total: about %.1f GPU-hours (set EPOCH_S=seconds per epoch for your own figure)\\n\", s}" "$PLAN_TOTAL"; rm -f "$PLAN_TOTAL" "$PLAN_SEARCHES"' EXIT
fi

# finished_runs DIR: the finished searches under DIR, comma-separated, the runs a script replays `nasrun select` on;
# MATCH="key=v1,v2 key=v" keeps those whose config holds one of the values of each key (nasrun.plan --runs).
finished_runs() {
    "$NASRUN_PY" -m nasrun.plan --runs "$1" || true
}

# retrain SEARCH_DIR OUT_DIR [eval overrides]: the table's retrain step. Every finished search under SEARCH_DIR is
# retrained from scratch (nasrun eval mode=retrain) in its own space and on its own dataset, with the table's protocol
# and seeds given as overrides (e.g. retrain=robust_small seed=0), one sweep per space and dataset under OUT_DIR.
# space=S among the overrides retrains only the searches of S; dataset=D retrains them on D instead (e.g. ImageNet);
# RETRAIN="..." adds overrides of your own; EACH_GENOTYPE=N retrains each of the N genotypes a search writes to its
# genotypes/ (SS-DARTS: 4) instead of its genotype.json. `nasrun report` matches each retrain to its search's method
# and space, so the paper's rows compare test error and params after retraining. DRY=1: one planned retrain per search.
retrain() {
    _retrain_step --searched "$@"
}

# retrain_best RETRAIN_DIR OUT_DIR [eval overrides]: the DARTS protocol's second round. Per search setting (the
# retrains under RETRAIN_DIR that differ only in seed and genotype), the genotype whose retrain has the lowest test
# error is retrained again with the overrides' protocol and seeds (e.g. seed=1,2,3). BY="key ..." keeps groups apart
# by keys that are pooled otherwise (search.selection: the best of each SS-DARTS genotype rather than of all four).
# MATCH="key=v1,v2 key=v" (all three steps) takes only the runs whose config holds one of the values of each key.
retrain_best() {
    _retrain_step --best "$@"
}

# retrain_picked SEARCH_DIR OUT_DIR [eval overrides] with PICK_BY=COLUMN POOL="key ...": per search setting, pooling
# the POOL keys (and the seed), the search with the highest report column COLUMN is retrained ([SP] Table V: the best
# of four t_sp by `supernet monitor`).
retrain_picked() {
    _retrain_step --picked "$@"
}

_retrain_step() {
    local list=$1 search=$2 out=$3 found=0 lines key runs space="" dataset="" arg
    shift 3
    local args=()
    for arg in "$@"; do
        case "$arg" in
            space=*) space=${arg#space=} ;;
            dataset=*) dataset=${arg#dataset=}; args+=("$arg") ;;
            *) args+=("$arg") ;;
        esac
    done
    if [ -n "${DRY:-}" ]; then
        local planned=--retrain
        [ "$list" = --best ] && planned=--retrain-best
        [ "$list" = --picked ] && planned=--retrain-picked
        "$NASRUN_PY" -m nasrun.plan $planned "$search" nasrun eval -m mode=retrain "$@" "${RETRAIN_ARGS[@]}" \
            hydra.sweep.dir="$out" "${LAUNCH[@]}" || STATUS=1
        return 0
    fi
    local each=()
    [ -n "${EACH_GENOTYPE:-}" ] && [ "$list" = --searched ] && each=(--each)
    lines=$("$NASRUN_PY" -m nasrun.plan "$list" "$search" "${each[@]}") || { STATUS=1; return 0; }
    while IFS=$'\t' read -r key runs; do
        [ -n "$key" ] || continue
        [ -z "$space" ] || [ "${key%% *}" = "space=$space" ] || continue
        [ -z "$dataset" ] || key=${key%% *}
        found=1
        # shellcheck disable=SC2086 # key is "space=S dataset=D"
        run nasrun eval -m mode=retrain $key genotype="$runs" "${args[@]}" "${RETRAIN_ARGS[@]}" \
            hydra.sweep.dir="$out/$(sed 's/space=//; s/ dataset=/-/' <<< "$key")" "${LAUNCH[@]}"
    done <<< "$lines"
    if [ "$found" = 0 ]; then
        echo "nothing to retrain under $search${space:+ in space $space}" >&2
        STATUS=1
    fi
    return 0
}
