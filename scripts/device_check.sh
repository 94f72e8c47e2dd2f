#!/usr/bin/env bash
# The GPU check, run first whenever a GPU is at hand (under 8 minutes on an
# H100/H200):
#
#   bash scripts/device_check.sh OUTDIR [--device cuda] [--short] [--compile] [--tests-cap S]
#
# 1. installs what a bare GPU image lacks from the wheels carried in .whl/ at the repository
#    root (scripts/fetch_device_wheels.sh downloads them; a wheel whose module already imports
#    is skipped), into /tmp/wg-site, and puts it and src/ on PYTHONPATH;
# 2. runs the test suite on the device (tests that take a `device` parameter run on CUDA),
#    `python -m pytest -q -x` under a time cap (default 180 s; pytest-xdist's -n 8 if present);
# 3. runs scripts/device_check.py: `waveglow bench` at fp32/fp16/bf16 per engine with
#    benchmarks/baseline.py in the same run, a folder of 100 ten-second mels end to end (cold
#    and warm compile cache), a 10-minute utterance with peak GPU memory, and the trained
#    demo weights' SNR for each reduced precision.
#
# Writes OUTDIR/device_check.json and OUTDIR/device_check.log; exits non-zero if a step failed.
# `--device cpu --short` is the dry run the test suite makes (tiny sizes, seconds).
set -u -o pipefail

usage() { echo "usage: $0 OUTDIR [--device cuda|cpu] [--short] [--compile] [--tests-cap SECONDS]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUTDIR=$1; shift
DEVICE=cuda; SHORT=0; COMPILE=0; TESTS_CAP=180
while [ $# -gt 0 ]; do
    case $1 in
        --device) DEVICE=${2:?}; shift 2 ;;
        --short) SHORT=1; shift ;;
        --compile) COMPILE=1; shift ;;
        --tests-cap) TESTS_CAP=${2:?}; shift 2 ;;
        *) usage ;;
    esac
done

HERE=$(cd "$(dirname "$0")" && pwd)
ROOT=$(dirname "$HERE")
mkdir -p "$OUTDIR"
OUTDIR=$(cd "$OUTDIR" && pwd)
LOG=$OUTDIR/device_check.log
WORK=$(mktemp -d /tmp/wg-device-check-sh.XXXXXX)
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
TEE_PID=$!
cd "$ROOT"
PYTHON=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 WAVEGLOW_OFFLINE=1 WAVEGLOW_HOME=$WORK/home
echo "device_check: $(date -u +%FT%TZ) device=$DEVICE short=$SHORT compile=$COMPILE root=$ROOT"
STATUS=0

# -- 1. wheels -------------------------------------------------------------------------------
"$PYTHON" - "$ROOT/.whl" /tmp/wg-site "$WORK/install.json" <<'EOF' || STATUS=1
import importlib.util, json, pathlib, subprocess, sys, time
start = time.perf_counter()
wheels, target, record = pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3])
# Distribution name -> the module it installs, where they differ.
MODULES = {"prometheus_client": "prometheus_client", "pycparser": "pycparser",
           "python_multipart": "multipart", "pyyaml": "yaml", "scikit_learn": "sklearn",
           "standard_aifc": "aifc", "standard_sunau": "sunau", "typing_extensions": "typing_extensions",
           "lazy_loader": "lazy_loader"}
found = sorted(wheels.glob("*.whl")) if wheels.is_dir() else []
install, skipped = [], []
for wheel in found:
    dist = wheel.name.split("-")[0].lower()
    module = MODULES.get(dist, dist)
    (skipped if importlib.util.find_spec(module) else install).append(wheel)
status = "ok"
if install:
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
               "--no-compile", "--no-cache-dir", "--upgrade", "--target", target, *map(str, install)]
    status = "ok" if subprocess.run(command).returncode == 0 else "failed"
record.write_text(json.dumps({"status": status, "wheels_dir": str(wheels),
                              "installed": [w.name for w in install],
                              "skipped_importable": [w.name for w in skipped],
                              "seconds": time.perf_counter() - start}))
print(f"wheels: installed {len(install)}, skipped {len(skipped)} (already importable): {status}")
sys.exit(status != "ok")
EOF
export PYTHONPATH=/tmp/wg-site:$ROOT/src${PYTHONPATH:+:$PYTHONPATH}

# -- 2. the test suite on the device -----------------------------------------------------------
if [ "$SHORT" = 1 ]; then
    # The dry run: a few quick tests (the whole suite runs in CI; this proves the step works).
    TESTS=(tests/test_gpu_engine.py -k "engine_kinds or bucket_planning")
else
    TESTS=(tests --deselect tests/test_device_check.py)
    "$PYTHON" -c "import xdist" 2>/dev/null && TESTS+=(-n 8)
fi
echo "tests: $PYTHON -m pytest -q -x ${TESTS[*]} (cap ${TESTS_CAP} s)"
START=$(date +%s.%N)
timeout "$TESTS_CAP" "$PYTHON" -m pytest -q -x -p no:cacheprovider "${TESTS[@]}" 2>&1 | tee "$WORK/pytest.txt"
TESTS_RC=${PIPESTATUS[0]}
END=$(date +%s.%N)
[ "$TESTS_RC" = 0 ] || STATUS=1
"$PYTHON" - "$WORK/pytest.txt" "$TESTS_RC" "$START" "$END" "$WORK/tests.json" "${TESTS[*]}" <<'EOF'
import json, re, sys
text = open(sys.argv[1], errors="replace").read()
rc = int(sys.argv[2])
summary = [l for l in text.splitlines() if re.search(r"\b(passed|failed|error)", l) and " in " in l]
counts = {k: int(n) for n, k in re.findall(r"(\d+) (passed|failed|skipped|errors?|deselected)",
                                           summary[-1] if summary else "")}
json.dump({"status": "ok" if rc == 0 else ("timed out" if rc == 124 else "failed"),
           "returncode": rc, "summary": summary[-1].strip("= ") if summary else None,
           "counts": counts, "command": "python -m pytest -q -x " + sys.argv[6],
           "seconds": float(sys.argv[4]) - float(sys.argv[3]),
           "failures": [l for l in text.splitlines() if l.startswith(("FAILED", "ERROR"))][:20]},
          open(sys.argv[5], "w"))
EOF

# -- 3. the measurements -------------------------------------------------------------------------
ARGS=(run --out "$OUTDIR" --device "$DEVICE" --tests-json "$WORK/tests.json"
      --install-json "$WORK/install.json" --work "$WORK/py")
[ "$SHORT" = 1 ] && ARGS+=(--short)
[ "$COMPILE" = 1 ] && ARGS+=(--compile)
"$PYTHON" "$HERE/device_check.py" "${ARGS[@]}" || STATUS=1

# -- 4. ONNX on the GPU: onnxruntime's CUDA provider and TensorRT, into the log -----------------
# Exports the bundled demo model (CPU work, ~40 s), checks onnxruntime-gpu against the torch
# engine when that provider exists, and builds + times TensorRT engines with the shape profile
# of synth's GPU bucketing (8 x 2048 frames at most) when trtexec exists.  Each part is skipped
# with a note when its tool is missing; nothing here fails the whole check.
ONNX_OUT="$WORK/onnx"   # scratch: only the log comes back (the device returns few files)
mkdir -p "$ONNX_OUT"
if [ "$SHORT" = 1 ]; then
  echo "onnx: skipped in the dry run"
elif "$PYTHON" -c "import onnx, onnxruntime" 2>/dev/null; then
  "$PYTHON" -m waveglow_cli export demo -o "$ONNX_OUT/demo.onnx" --overwrite --json \
    || echo "onnx export FAILED"
  timeout 300 "$PYTHON" - "$ONNX_OUT/demo.onnx" 2>&1 <<'EOF' || echo "ort cuda check FAILED"
import sys, time, statistics, torch, onnxruntime
from waveglow_cli.onnx_engine import OnnxEngine
from waveglow_cli.vocoder import load_vocoder
from waveglow_cli.settings import Settings
if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
    print("onnxruntime has no CUDA provider (install onnxruntime-gpu): skipped"); sys.exit(0)
engine = OnnxEngine(sys.argv[1], "cuda")
print("providers", engine.providers)
frames = 862                                       # 10 s at 22.05 kHz
g = torch.Generator().manual_seed(0)
mel = (torch.randn(8, 80, frames, generator=g) * 2 - 5).clamp(-11.5, 2)
z = torch.randn(8, 8, frames * 32, generator=g)
lengths = torch.tensor([frames - 50 * i for i in range(8)])
engine.infer(mel, 0.6, z, lengths)                 # warm-up (and TensorRT build, if that EP)
times = []
for _ in range(5):
    t = time.perf_counter(); audio = engine.infer(mel, 0.6, z, lengths); times.append(time.perf_counter() - t)
print(f"ort cuda 8 x 10 s: median {statistics.median(times):.3f} s, {80 / statistics.median(times):.0f}x real time")
device = "cuda" if torch.cuda.is_available() else "cpu"
ref = load_vocoder("demo", device, precision="fp32", settings=Settings.from_env()).engine
expected = ref.infer(mel, 0.6, z, lengths).float().cpu()
print(f"max abs diff vs torch {device} fp32: {float((audio - expected).abs().max()):.3e}")
EOF
  if command -v trtexec >/dev/null 2>&1; then
    SHAPES="--minShapes=mel:1x80x1,z:1x8x32,lengths:1 --optShapes=mel:8x80x1024,z:8x8x32768,lengths:8 --maxShapes=mel:8x80x2048,z:8x8x65536,lengths:8 --shapes=mel:8x80x862,z:8x8x27584,lengths:8"
    for PREC in fp16; do   # fp16 only: a TensorRT build takes minutes, the check has 8
      FLAG=""; [ "$PREC" = fp16 ] && FLAG="--fp16"
      timeout 180 trtexec --onnx="$ONNX_OUT/demo.onnx" --saveEngine="$ONNX_OUT/demo_$PREC.plan" \
        $SHAPES $FLAG --warmUp=500 --iterations=20 > "$ONNX_OUT/trtexec_$PREC.txt" 2>&1 \
        && grep -E "Throughput|Latency: min|GPU Compute Time: min" "$ONNX_OUT/trtexec_$PREC.txt" \
        || { echo "trtexec $PREC FAILED:"; tail -20 "$ONNX_OUT/trtexec_$PREC.txt"; }
    done
  else
    echo "trtexec not found: TensorRT not measured"
  fi
else
  echo "onnx/onnxruntime not installed: ONNX checks skipped (pip install -e '.[onnx]')"
fi

rm -rf "$WORK"
echo "device_check: done $(date -u +%FT%TZ), status $STATUS; $OUTDIR/device_check.json"
exec >&- 2>&-
wait "$TEE_PID" 2>/dev/null  # the log is complete when the script ends
exit $STATUS
