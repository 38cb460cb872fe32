#!/usr/bin/env bash
# The first minutes on a GPU machine, in one call:  benchmarks/gpu_first_run.sh OUTDIR
#
# Steps, each under its own `timeout`, its output teed into OUTDIR/<step>.log:
#   facts       nvidia-smi, uname -r, python/torch/CUDA versions
#   build       pip install --no-index --no-build-isolation --no-deps <repo>  (no network; what is installed)
#   attributes  featstore._cuda: devices, cudaDevAttrHostRegisterReadOnlySupported, the register mode
#   probe       benchmarks/gpu_register_probe.py: RssAnon before/after registering, time, exactness
#   tests       the CUDA tests, skips shown (-rs), JUnit XML in OUTDIR/tests.xml
#   gpu_check   benchmarks/gpu_check.py --no-install (JSON and Markdown in OUTDIR/gpu_check/, after every stage)
# OUTDIR/steps.tsv gets one line per step as it ends (step, exit status, seconds, limit; 124 = timed
# out), so a partial run keeps every finished step. The whole run stays within FIRST_RUN_BUDGET_S
# (default 530 s, under 9 minutes): a step gets at most what is left, and none starts with < 5 s left.
# Environment: PYTHON (default python3), FIRST_RUN_BUDGET_S, T_FACTS T_BUILD T_ATTR T_PROBE T_TESTS
# T_CHECK (per-step limits, seconds), PROBE_MIB (size of the probe's set), CHECK_ARGS (extra gpu_check
# arguments, default "--repeats 3").
# Exit status: 0 when every step exited 0, else 1 (steps.tsv says which did not).
set -u
OUT=${1:?usage: benchmarks/gpu_first_run.sh OUTDIR}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
BUDGET=${FIRST_RUN_BUDGET_S:-530}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd)
START=$(date +%s)
FAILED=0
printf 'step\tstatus\tseconds\tlimit\n' >"$OUT/steps.tsv"

step() {  # step NAME LIMIT COMMAND...: run COMMAND in OUTDIR under timeout, tee its output, record it
    local name=$1 limit=$2 left rc t0
    shift 2
    left=$((START + BUDGET - $(date +%s)))
    if [ "$left" -lt 5 ]; then
        printf '%s\tnot run (budget spent)\t0\t0\n' "$name" >>"$OUT/steps.tsv"
        FAILED=1
        return
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "== $name (limit ${limit}s) ==" | tee "$OUT/$name.log"
    t0=$(date +%s)
    (cd "$OUT" && timeout -k 5 "$limit" "$@") 2>&1 | tee -a "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$(($(date +%s) - t0))" "$limit" >>"$OUT/steps.tsv"
    [ "$rc" -ne 0 ] && FAILED=1
    [ "$rc" -eq 124 ] && echo "== $name: TIMED OUT after ${limit}s ==" | tee -a "$OUT/$name.log"
    return 0
}

facts() {
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC')"
    echo "kernel: $(uname -r)"
    echo "repo: $(git -C "$REPO" rev-parse HEAD 2>/dev/null || echo '?')"
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi: not found"; fi
    "$PY" -c 'import sys, torch; print("python", sys.version.split()[0]); print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(), "devices", torch.cuda.device_count())'
}

ATTRS='
import torch
import featstore.batches.cuda as fc
st = fc.status()
print("featstore._cuda:", st)
mod = fc.module()
for d in range(st.devices if mod is not None else 0):
    print(f"cuda:{d}: cudaDevAttrHostRegisterReadOnlySupported={int(mod.read_only_register_supported(d))}",
          f"register mode={fc.register_mode(d)!r}", "uva_support=", fc.uva_support(torch.device("cuda", d)))
'

step facts "${T_FACTS:-30}" bash -c "$(declare -f facts); PY='$PY' REPO='$REPO' facts"
step build "${T_BUILD:-180}" "$PY" -m pip install --no-index --no-build-isolation --no-deps "$REPO"
step attributes "${T_ATTR:-30}" "$PY" -c "$ATTRS"
step probe "${T_PROBE:-60}" "$PY" "$REPO/benchmarks/gpu_register_probe.py" --out "$OUT" --mib "${PROBE_MIB:-1024}"
step tests "${T_TESTS:-120}" "$PY" -m pytest -q -rs -p no:cacheprovider --junitxml="$OUT/tests.xml" \
    "$REPO/tests/batches/test_cuda.py" "$REPO/tests/batches/test_cuda_device.py" \
    "$REPO/tests/batches/test_gpu_policy.py" "$REPO/tests/batches/test_gpu_check.py" \
    "$REPO/tests/batches/test_cuda_quant.py"
# shellcheck disable=SC2086  # CHECK_ARGS is a list of arguments
step gpu_check "${T_CHECK:-300}" "$PY" "$REPO/benchmarks/gpu_check.py" --no-install --out "$OUT/gpu_check" ${CHECK_ARGS:---repeats 3}

echo "== done in $(($(date +%s) - START))s; $OUT/steps.tsv ==" | tee -a "$OUT/steps.log"
column -t -s $'\t' "$OUT/steps.tsv" 2>/dev/null || cat "$OUT/steps.tsv"
exit "$FAILED"
