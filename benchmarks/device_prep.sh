#!/usr/bin/env bash
# Prepares, on this machine, what benchmarks/device_check.sh needs on a lent GPU machine (run from the repo root):
#   .whl/     wheels the device image lacks: datasketch and platformdirs, and the serve/test stack (FastAPI,
#             uvicorn, python-multipart, httpx2 and what they need) so the API tests run there too; the image
#             has torch, numpy, scipy, pillow, click, tqdm, matplotlib, filelock, pytest and hypothesis.
#   .devdata/ the shared dev photos' builder and archive, and the ImageNet weights (../shared does not travel).
# Both are ignored through .git/info/exclude. PYVER picks the wheels' Python (the device image has 3.12);
# PYVER=3.11 makes wheels for this machine, for a dry run of device_check.sh here.
set -euo pipefail
PYVER=${PYVER:-3.12}
SHARED=${SHARED:-../shared/data}
mkdir -p .git/info && touch .git/info/exclude
for p in /.whl/ /.devdata/; do grep -qxF "$p" .git/info/exclude || echo "$p" >> .git/info/exclude; done
rm -rf .whl && mkdir -p .whl .devdata
cp "$SHARED"/{build_dev_stl10.py,cifar10_dev.tar.gz,mobilenet_v2_imagenet_dequantized.pth} .devdata/
wheels() { python3 -m pip download -q --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$@"; }
wheels --no-deps "datasketch>=2,<3" platformdirs
# setuptools builds the project there (pip install --no-deps .): the console script the tests run needs an install.
wheels --no-deps -d .whl/build "setuptools>=77"
wheels "fastapi>=0.110" "uvicorn>=0.29" "python-multipart>=0.0.9" "httpx2>=2.16"
# One version of each package, or the install there stops.
dupes=$(ls .whl/*.whl | xargs -n1 basename | cut -d- -f1 | tr 'A-Z-' 'a-z_' | sort | uniq -d)
[ -z "$dupes" ] || { echo "two versions of: $dupes" >&2; exit 1; }
du -sh .whl .devdata
echo "ready: device run with carry [\".whl\", \".devdata\"], command \"bash benchmarks/device_check.sh\", timeout_s 540"
