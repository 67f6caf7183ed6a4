#!/usr/bin/env bash
# The performance checks to run when a GPU machine is lent (docs/performance.md, "GPU"), as one script.
#
#   benchmarks/device_check.sh               # CUDA when available, else the CPU smoke sizes
#   benchmarks/device_check.sh --cpu-smoke   # small sizes on the CPU (tests/test_device_check.py)
#
# Writes under $OUT (else ./device-check): device_check.log (everything printed), loss_overhead.json,
# llm_loss_memory.json, step_attribution.json (the classification step with AMP bf16; on CUDA also the
# LLM step of SmolLM2-135M's shape, random weights), step_attribution_fused.json (the LLM step with the
# fused loss, which compiles its kernel first). Installs what is missing (pip install -e
# '.[llm,bench]', quietly) into .venv when it exists, else into a new .venv that sees the system's
# packages (a preinstalled CUDA torch is kept). Each check has a time limit; a failed check is reported
# and the others still run; the exit status is the number of failed checks. On CUDA the limits add up to
# 7 minutes, so with the install the script stays under the 8 minutes of a device check.
set -uo pipefail
cd "$(dirname "$0")/.."

smoke=0
for arg in "$@"; do
    case "$arg" in
        --cpu-smoke) smoke=1 ;;
        -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
        *) echo "device_check.sh: unknown argument $arg (use --cpu-smoke)" >&2; exit 2 ;;
    esac
done

out="${OUT:-./device-check}"
mkdir -p "$out"
log="$out/device_check.log"
: > "$log"
say() { echo "$*" | tee -a "$log"; }

py="${PYTHON:-}"
if [ -z "$py" ]; then
    [ -x .venv/bin/python ] || python3 -m venv --system-site-packages .venv >> "$log" 2>&1
    py=.venv/bin/python
fi
if ! "$py" -c "import eakd, transformers, liger_kernel" > /dev/null 2>&1; then
    say "installing eakd[llm,bench] into $py"
    "$py" -m pip install -q -e '.[llm,bench]' >> "$log" 2>&1 || say "pip install failed (see the log)"
fi
if [ "$smoke" = 0 ] && ! "$py" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2> /dev/null; then
    say "no CUDA device: running the CPU smoke sizes"
    smoke=1
fi
say "device check $(date -u '+%Y-%m-%d %H:%M UTC'), smoke=$smoke, output $out"
"$py" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda,
    torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" 2>&1 | tee -a "$log"
command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv \
    2>&1 | tee -a "$log"

failed=0
check() {  # check NAME SECONDS COMMAND...: run with a time limit, log its output, count a failure
    local name=$1 limit=$2
    shift 2
    say ""
    say "== $name: $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | grep -v '^USDT:' | tee -a "$log"
    local rc=${PIPESTATUS[0]}
    say "== $name: exit $rc after $((SECONDS - start)) s"
    [ "$rc" = 0 ] || failed=$((failed + 1))
}

if [ "$smoke" = 1 ]; then
    check loss_overhead 300 "$py" benchmarks/loss_overhead.py --small --repeats 1 --threads 1 \
        --device cpu --dtype float32 --results "$out/loss_overhead.json"
    check llm_loss_memory 300 "$py" benchmarks/llm_loss_memory.py --device cpu --dtype float32 \
        --sizes 128 --repeats 1 --json "$out/llm_loss_memory.json"
    check step_attribution 300 "$py" benchmarks/step_attribution.py --device cpu --amp --small \
        --cases classification llm-online llm-cache --steps 2 --warmup 1 --results "$out/step_attribution.json"
    check step_attribution_fused 300 "$py" benchmarks/step_attribution.py --device cpu --amp --small \
        --cases llm-online-fused llm-cache-fused --steps 2 --warmup 1 --results "$out/step_attribution_fused.json"
else
    check loss_overhead 90 "$py" benchmarks/loss_overhead.py --repeats 20 --device cuda --dtype bfloat16 \
        --results "$out/loss_overhead.json"
    check llm_loss_memory 120 "$py" benchmarks/llm_loss_memory.py --device cuda --dtype bfloat16 \
        --sizes 8192 32768 --repeats 3 --json "$out/llm_loss_memory.json"
    check step_attribution 100 "$py" benchmarks/step_attribution.py --device cuda --amp \
        --cases classification llm-online llm-cache --llm-weights random --steps 5 \
        --results "$out/step_attribution.json"
    check step_attribution_fused 110 "$py" benchmarks/step_attribution.py --device cuda --amp \
        --cases llm-online-fused llm-cache-fused --llm-weights random --steps 4 \
        --results "$out/step_attribution_fused.json"
fi
say ""
say "device check done: $failed failed check(s); files in $out:"
ls -l "$out" | tee -a "$log"
exit "$failed"
