#!/usr/bin/env bash
# Issue 11's measurements in ONE device run (a GPU session has 15 minutes of device time in all).
#
# Prepare here, in the repository root (both folders are ignored by git and travel with `carry`):
#   mkdir -p .whl .devdata && cp ../shared/data/{build_dev_stl10.py,cifar10_dev.tar.gz,mobilenet_v2_imagenet_dequantized.pth} .devdata/
#   for p in datasketch==2.0.0 platformdirs; do python3 -m pip download --no-deps --only-binary=:all: \
#       --python-version 3.12 --implementation cp --platform manylinux2014_x86_64 -d .whl "$p"; done
#   printf '/.whl/\n/.devdata/\n' >> .git/info/exclude
# Then: device run, carry [".whl", ".devdata"], command "bash benchmarks/device_check.sh", timeout_s 540.
# Everything lands in $OUT (pytest summary, fidelity, bench, timings). IMAGES=2000 makes a quick dry run.
set -uo pipefail
OUT=${OUT:-/tmp/stl10sim-device-out}; mkdir -p "$OUT"
IMAGES=${IMAGES:-100000}
export PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
W=.devdata/mobilenet_v2_imagenet_dequantized.pth
step() { echo "== $* ($(date +%T))"; }
py() { python3 "$@"; }

step "device"; py -c "import torch; print(torch.__version__, torch.cuda.is_available() and torch.cuda.get_device_name(0))" | tee "$OUT/device.txt"
step "test suite"; py -m pytest -q -p no:cacheprovider -x 2>&1 | tail -3 | tee "$OUT/pytest.txt"
step "dev photos"; (cd .devdata && python3 build_dev_stl10.py /tmp/dev >/dev/null) || exit 1
step "fidelity: 9,000 labelled photos at 224 px per precision"
for p in fp32 fp16 bf16; do
  py -m stl10_similarity -q extract --data-dir /tmp/dev --weights "$W" --precision "$p" --cache-dir "/tmp/c-$p" | tee -a "$OUT/fidelity.txt"
done
for p in fp16 bf16; do
  echo "$p vs fp32:" >> "$OUT/fidelity.txt"; py benchmarks/precision_fidelity.py /tmp/c-fp32 "/tmp/c-$p" >> "$OUT/fidelity.txt"
done
cat "$OUT/fidelity.txt"
step "bench --stage extract (naive and ours, fp32/fp16/bf16, batches 64-1024)"
py -m stl10_similarity -q bench --stage extract --n 2048 --data-dir /tmp/dev --weights "$W" > "$OUT/bench-extract.txt"; cat "$OUT/bench-extract.txt"
step "extract $IMAGES images in-process: threads on and off, against the network alone"
for cfg in "fp32 64" "fp16 256" "fp16 512"; do
  set -- $cfg
  py benchmarks/extract_timing.py /tmp/dev --weights "$W" --images "$IMAGES" --precision "$1" --batch-size "$2" \
    > "$OUT/timing-$1-b$2.json"; tail -n +1 "$OUT/timing-$1-b$2.json" | grep -E 'pipelined|share|network_only|"True"|"False"'
done
step "done"
