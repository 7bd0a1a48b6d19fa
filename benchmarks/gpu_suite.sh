#!/usr/bin/env bash
# GPU throughput suite for one GPU machine (sized for one H200 in at most ~8 minutes).
#
#   bash benchmarks/gpu_suite.sh            # results in $OUT, or ./gpu_results when OUT is unset
#
# Measures, with train.py's --benchmark modes (global images/s, device synchronized before the clock):
#   model   batch 256: fp32; AMP + channels_last eager; AMP + channels_last compiled
#   data    the training input pipeline alone: CPU decode (--backend fast, 16 workers; crop regions, and whole
#           images with --roi-decode off) vs GPU decode (nvJPEG)
#   full    real data and training (AMP + channels_last) with each input pipeline
# on generated ImageNet-like JPEGs (500x375, quality 75-95, photographic content when scikit-image is
# installed, 1/f noise otherwise). Each measurement is one JSON file; summary.json gathers them with the
# ratios the project targets: AMP+NHWC >= 6,000 img/s compiled (4,500 eager), full >= 90% of model-only.
# Environment: PYTHON (default python3), WORKERS (default 16), IMAGES (default 6000), STEPS (default 40),
# DATA (where the JPEGs are generated, default /tmp/gpu_suite_data; reused when it holds IMAGES of them).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$repo/gpu_results}
python=${PYTHON:-python3}
workers=${WORKERS:-16}
images=${IMAGES:-6000}
steps=${STEPS:-40}
data=${DATA:-/tmp/gpu_suite_data}
mkdir -p "$out"
export PYTHONUNBUFFERED=1

"$python" - "$data" "$images" <<'PY' || exit 1
"""Write an ImageNet-like ImageFolder (7 classes) once. A marker written last records the image count; a folder
without a matching one (an interrupted generation, another IMAGES) stops the suite instead of being measured."""
import os, sys
from multiprocessing import Pool

import numpy as np
from PIL import Image

root, total = sys.argv[1], int(sys.argv[2])
marker = os.path.join(root, ".complete")
if os.path.isfile(marker) and open(marker).read().strip() == str(total):
    sys.exit(0)
if os.path.exists(root) and os.listdir(root):
    sys.exit(f"gpu_suite.sh: DATA={root} is not a complete set of {total} generated JPEGs (interrupted, or made "
             "with another IMAGES); remove it or point DATA at an empty folder")

def photos():
    try:
        import skimage.data as d
        return [np.asarray(getattr(d, n)()) for n in ("astronaut", "coffee", "chelsea", "rocket")]
    except Exception:
        return None

PHOTOS = photos()

def one(i):
    rng = np.random.default_rng(i)
    w, h = (500, 375) if i % 3 else (375, 500)
    if PHOTOS:
        p = PHOTOS[i % len(PHOTOS)]
        y, x = rng.integers(0, max(1, p.shape[0] - h // 2)), rng.integers(0, max(1, p.shape[1] - w // 2))
        img = Image.fromarray(p[y:y + h, x:x + w]).resize((w, h))
    else:  # 1/f noise: the spectrum of natural images, so JPEG sizes and decode costs are realistic
        f = np.fft.fftfreq(h)[:, None] ** 2 + np.fft.rfftfreq(w)[None, :] ** 2
        spec = (rng.normal(size=(3, h, w // 2 + 1)) + 1j * rng.normal(size=(3, h, w // 2 + 1))) / np.maximum(f, 1e-4)
        arr = np.fft.irfft2(spec, s=(h, w))
        arr = (arr - arr.min()) / (arr.max() - arr.min() + 1e-9) * 255
        img = Image.fromarray(arr.transpose(1, 2, 0).astype(np.uint8))
    split = "val" if i % 10 == 0 else "train"
    folder = os.path.join(root, split, f"class{i % 7:02d}")
    os.makedirs(folder, exist_ok=True)
    img.save(os.path.join(folder, f"img{i:06d}.JPEG"), quality=int(75 + i % 21))

with Pool() as pool:
    pool.map(one, range(total), chunksize=64)
with open(marker, "w") as f:
    f.write(str(total))
print(f"generated {total} JPEGs in {root}")
PY

run() {  # run NAME ARGS...: one train.py benchmark, its JSON line saved as NAME.json
    local name=$1
    shift
    echo "== $name: train.py $*"
    if "$python" "$repo/train.py" "$@" --device cuda --benchmark-steps "$steps" --benchmark-warmup 10 \
        >"$out/$name.log" 2>&1; then
        tail -n 1 "$out/$name.log" >"$out/$name.json"
        cat "$out/$name.json"
    else
        echo "   failed, see $out/$name.log"
        tail -n 5 "$out/$name.log"
    fi
}

amp=(--amp --channels-last)
run model_fp32 --benchmark model --batch-size 256
run model_amp_eager --benchmark model --batch-size 256 "${amp[@]}"
run model_amp_compiled --benchmark model --batch-size 256 "${amp[@]}" --compile
run data_cpu_decode --benchmark data --data-path "$data" --batch-size 256 --backend fast --workers "$workers"
run data_cpu_whole_decode --benchmark data --data-path "$data" --batch-size 256 --backend fast --workers "$workers" \
    --roi-decode off
run data_gpu_decode --benchmark data --data-path "$data" --batch-size 256 --backend fast --workers "$workers" \
    --decode-device cuda
run full_cpu_decode --benchmark full --data-path "$data" --batch-size 256 --backend fast --workers "$workers" "${amp[@]}"
run full_gpu_decode --benchmark full --data-path "$data" --batch-size 256 --backend fast --workers "$workers" \
    --decode-device cuda "${amp[@]}"

"$python" - "$out" <<'PY'
import json, os, sys

out = sys.argv[1]
res = {}
for name in ("model_fp32", "model_amp_eager", "model_amp_compiled", "data_cpu_decode", "data_cpu_whole_decode",
             "data_gpu_decode", "full_cpu_decode", "full_gpu_decode"):
    try:
        with open(os.path.join(out, name + ".json")) as f:
            res[name] = json.load(f)["imgs_per_sec"]
    except (OSError, ValueError, KeyError):
        res[name] = None

def ratio(a, b):
    return None if res[a] is None or res[b] is None else res[a] / res[b]

summary = {
    "imgs_per_sec": res,
    "full_cpu_decode_vs_model_eager": ratio("full_cpu_decode", "model_amp_eager"),
    "full_gpu_decode_vs_model_eager": ratio("full_gpu_decode", "model_amp_eager"),
    "gpu_vs_cpu_decode_data": ratio("data_gpu_decode", "data_cpu_decode"),
    "roi_vs_whole_decode_data": ratio("data_cpu_decode", "data_cpu_whole_decode"),
    "targets": {"model_amp_compiled": 6000, "model_amp_eager": 4500, "full_vs_model": 0.9},
}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps(summary, indent=2))
PY
