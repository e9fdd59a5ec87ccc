#!/usr/bin/env bash
# Issue 11's measurements in ONE device run (a GPU session has 15 minutes of device time in all).
#
# Prepare here, in the repository root: `bash benchmarks/device_prep.sh` (wheels into .whl/, dev photos and
# weights into .devdata/, both ignored). Then: device run, carry [".whl", ".devdata"], command
# "bash benchmarks/device_check.sh", timeout_s 540. Everything lands in $OUT (pytest summary, fidelity, bench,
# timings). A dry run on a CPU: `PYVER=3.11 bash benchmarks/device_prep.sh`, then
# `IMAGES=2000 LIMIT=300 BENCH_N=128 PRECISIONS=fp32 CONFIGS=fp32:16 bash benchmarks/device_check.sh` (small sizes; same steps).
set -uo pipefail
OUT=${OUT:-/tmp/stl10sim-device-out}; mkdir -p "$OUT"
IMAGES=${IMAGES:-100000}
LIMIT=${LIMIT:+--limit $LIMIT}      # fidelity on the first LIMIT photos only (dry runs)
BENCH_N=${BENCH_N:-2048}
PRECISIONS=${PRECISIONS:-fp32 fp16 bf16}   # a CPU dry run: PRECISIONS=fp32
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
fi
# Installed like a user would (the tests run the `stl10sim` console script); the image's torch stays.
python3 -m pip install -q --no-deps --no-index --find-links .whl/build . || exit 1
W=.devdata/mobilenet_v2_imagenet_dequantized.pth
step() { echo "== $* ($(date +%T))"; }
py() { python3 "$@"; }

step "device"; py -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
step "test suite"; py -m pytest -q -p no:cacheprovider > "$OUT/pytest.txt" 2>&1; tail -15 "$OUT/pytest.txt"
step "dev photos"; (cd .devdata && python3 build_dev_stl10.py /tmp/dev >/dev/null) || exit 1
step "fidelity: 9,000 labelled photos at 224 px per precision"
for p in $PRECISIONS; do
  py -m stl10_similarity -q extract --data-dir /tmp/dev --weights "$W" --precision "$p" $LIMIT --cache-dir "/tmp/c-$p" | tee -a "$OUT/fidelity.txt"
done
for p in ${PRECISIONS#fp32}; do
  echo "$p vs fp32:" >> "$OUT/fidelity.txt"; py benchmarks/precision_fidelity.py /tmp/c-fp32 "/tmp/c-$p" >> "$OUT/fidelity.txt"
done
cat "$OUT/fidelity.txt"
step "bench --stage extract (naive and ours, fp32/fp16/bf16, batches 64-1024)"
py -m stl10_similarity -q bench --stage extract --n "$BENCH_N" --data-dir /tmp/dev --weights "$W" > "$OUT/bench-extract.txt"; cat "$OUT/bench-extract.txt"
step "extract $IMAGES images in-process: threads on and off, against the network alone"
for cfg in ${CONFIGS:-fp32:64 fp16:256 fp16:512}; do
  set -- ${cfg/:/ }
  py benchmarks/extract_timing.py /tmp/dev --weights "$W" --images "$IMAGES" --precision "$1" --batch-size "$2" \
    > "$OUT/timing-$1-b$2.json"; tail -n +1 "$OUT/timing-$1-b$2.json" | grep -E 'pipelined|share|network_only|"True"|"False"'
done
step "done"
