#!/usr/bin/env bash
# The prepared GPU run (benchmarks/RESULTS.md): every figure in <= 8 minutes, in priority order, each one
# appended under $OUT as soon as it is measured; no job starts after 7 minutes.
#
#   on the GPU machine, after the wheel install (RESULTS.md has the whole device command):
#       bash benchmarks/gpu_run.sh
#   here, the same script on the CPU at toy sizes (OUT defaults to a new temp folder):
#       DRY_RUN=1 bash benchmarks/gpu_run.sh
#
# What it leaves in $OUT (three files, so the device tool brings every one back):
#   results.jsonl  every event and figure, one JSON object a line, flushed as measured
#   log.txt        everything printed, with elapsed seconds
#   RESULTS.md     benchmarks/RESULTS.md rendered from results.jsonl at the end
# Settings (environment): BUDGET_S (480: the Python process is stopped by then), GUARD_S (420: no job
# starts after), JOBS (comma-separated, default all), WORK (weights and runs; default /dev/shm when it has
# 48 GB free, else /tmp), PYTHON (python3), COMPILE_BACKEND (inductor).
set -uo pipefail
START=$(date +%s)
cd "$(dirname "$0")/.."
OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/synthecho-gpu-out.XXXXXX")}
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-480}
GUARD_S=${GUARD_S:-420}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 TQDM_DISABLE=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
elapsed() { echo $(($(date +%s) - START)); }
log() { echo "[$(elapsed)s] $*" | tee -a "$OUT/log.txt"; }

if [[ ${DRY_RUN:-0} == 1 ]]; then
    MODE=(--tiny --device cpu)
    WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/synthecho-gpu-work.XXXXXX")}
else
    MODE=(--device cuda)
    free_kb=$(df -Pk /dev/shm 2>/dev/null | awk 'NR == 2 {print $4}')
    if [[ ${free_kb:-0} -gt $((48 * 1024 * 1024)) ]]; then WORK=${WORK:-/dev/shm/synthecho-gpu}; fi
    WORK=${WORK:-/tmp/synthecho-gpu}
fi
log "gpu_run.sh: OUT=$OUT WORK=$WORK mode=${MODE[*]} budget=${BUDGET_S}s guard=${GUARD_S}s"
{ df -h /tmp /dev/shm 2>&1; free -g 2>&1; } | tee -a "$OUT/log.txt"  # WORK peaks near 30 GB (SD + checkpoints)

# 0. The machine and the imports: a missing wheel shows here, in seconds.
{ nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.limit,temperature.gpu \
    --format=csv 2>&1 || true; } | tee -a "$OUT/log.txt"
"$PY" benchmarks/gpu_generate.py --preflight 2>&1 | tee -a "$OUT/log.txt"
if [[ ${PIPESTATUS[0]} != 0 ]]; then
    log "preflight failed: a needed package is missing (see MISSING above); nothing measured"
    "$PY" benchmarks/gpu_report.py --out "$OUT/RESULTS.md" 2>&1 | tee -a "$OUT/log.txt"
    exit 1
fi

# 1. The jobs. A process that dies (not one stopped for time) is restarted; --resume skips what ended.
for attempt in 1 2 3; do
    left=$((BUDGET_S - 15 - $(elapsed)))  # 15 s kept for the report
    if ((left < 30)); then break; fi
    timeout -s INT -k 20 "$left" "$PY" benchmarks/gpu_generate.py "${MODE[@]}" --out "$OUT" --work "$WORK" \
        --start-epoch "$START" --guard-s "$GUARD_S" --compile-backend "${COMPILE_BACKEND:-inductor}" \
        --resume ${JOBS:+--only "$JOBS"} 2>&1 | tee -a "$OUT/log.txt"
    status=${PIPESTATUS[0]}
    log "gpu_generate.py (attempt $attempt) exited with $status"
    if [[ $status == 0 || $status == 124 || $status == 137 ]]; then break; fi
done

# 2. The page, from whatever was measured.
"$PY" benchmarks/gpu_report.py "$OUT/results.jsonl" --out "$OUT/RESULTS.md" 2>&1 | tee -a "$OUT/log.txt"
{ nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu,memory.used --format=csv 2>&1 || true; } \
    | tee -a "$OUT/log.txt"
if [[ ${DRY_RUN:-0} == 1 ]]; then rm -rf "$WORK"; fi
log "gpu_run.sh done: $(ls "$OUT" | tr '\n' ' ')"
