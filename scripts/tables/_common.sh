# Shared by the table scripts (sourced with the script's arguments, not run on its own).
#
# Arguments: launcher overrides (hydra/launcher=..., hydra.launcher.KEY=...) go to every nasrun command a script
# runs (searches, retrains, selections), so `hydra/launcher=slurm` sends all of them to Slurm; every other
# override goes to the searches. A failed job or sweep does not stop the script (`run`): the later steps and the
# report still run, and the script exits 1 at the end. DETACH=1 runs the whole script in the background (nohup,
# log in $OUT/table.log): it survives a logout, and `nasrun report $OUT` shows what has finished at any time;
# rerunning the script skips finished jobs. Overrides are plain `key=value`, also for keys that only the swept
# presets have (e.g. `scripts/tables/darts_pt_table.sh selector.proj_intv=1`: nasrun passes them on as ++key=value).
LAUNCH=()
SEARCH=()
for arg in "$@"; do
    case "$arg" in
        hydra/launcher=* | hydra.launcher.*) LAUNCH+=("$arg") ;;
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
    export PLAN_TOTAL
    NASRUN_PY="$(dirname "$(command -v nasrun)")/python"
    [ -x "$NASRUN_PY" ] || NASRUN_PY=python3
    run() {
        "$NASRUN_PY" -m nasrun.plan "$@" || STATUS=1
    }
    trap 'awk "{s += \$1} END {printf \"total: about %.1f GPU-hours (set EPOCH_S=seconds per epoch for your own figure)\\n\", s}" "$PLAN_TOTAL"; rm -f "$PLAN_TOTAL"' EXIT
fi
