# Shared by the table scripts (sourced with the script's arguments, not run on its own).
#
# Arguments: launcher overrides (hydra/launcher=..., hydra.launcher.KEY=...) go to every nasrun command a script
# runs (searches, retrains, selections), so `hydra/launcher=slurm` sends all of them to Slurm; every other
# override goes to the searches. A failed job or sweep does not stop the script (`run`): the later steps and the
# report still run, and the script exits 1 at the end. DETACH=1 runs the whole script in the background (nohup,
# log in $OUT/table.log): it survives a logout, and `nasrun report $OUT` shows what has finished at any time;
# rerunning the script skips finished jobs.
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
