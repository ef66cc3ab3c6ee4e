#!/usr/bin/env bash
# Every GPU figure of nbfacelib in one run: benchmarks/gpu_check.sh OUT_DIR [--device cpu --dry-run]
#
# Runs from the repository root with the machine's own python3 (override: PYTHON=...), nothing
# installed: PYTHONPATH=. makes the package and benchmarks/ importable. OUT_DIR gets
# gpu_check.json and gpu_check.md (rewritten after every measurement) and gpu_check.log.
# The python run budgets itself to 470 s; `timeout` is the backstop at 8 minutes (dry run: 1 hour).
set -u
if [ $# -lt 1 ]; then
    echo "usage: $0 OUT_DIR [--device cpu --dry-run] [--sections a,b]" >&2
    exit 2
fi
mkdir -p "$1" || exit 2
out=$(cd "$1" && pwd)  # absolute: the run happens from the repository root
shift
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
limit=480  # the full run's 8 minutes; the dry run (CPU smoke test) may be slow on a busy machine
case " $* " in *" --dry-run "*) limit=3600 ;; esac
timeout --signal=INT --kill-after=10 "$limit" "${PYTHON:-python3}" -m benchmarks.gpu_check "$out" "$@" 2>&1 | tee "$out/gpu_check.log"
status=${PIPESTATUS[0]}
if [ "$status" -ne 0 ]; then
    echo "gpu_check: python exited with $status; partial results (if any) in $out/gpu_check.json" >&2
fi
exit "$status"
