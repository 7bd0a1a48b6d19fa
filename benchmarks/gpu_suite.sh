#!/usr/bin/env bash
# GPU throughput suite for one GPU machine (sized for one H200 in at most ~8 minutes).
#
#   bash benchmarks/gpu_suite.sh        # $OUT/summary.json, and one folder per measurement: $OUT/NAME/
#
# Measures, with train.py's --benchmark modes (global images/s, the device synchronized before the clock):
#   model_fp32, model_amp_eager, model_amp_compiled    synthetic batches: fp32; AMP + channels_last; compiled
#   data_cpu_decode, data_cpu_whole_decode             the input pipeline alone, JPEGs decoded by WORKERS CPU
#                                                      processes (--backend fast): crop regions; whole images
#   data_gpu_decode                                    the same with the JPEGs decoded on the GPU (nvJPEG)
#   full_cpu_decode, full_gpu_decode                   real data and training (AMP + channels_last, eager)
#   dali_data, dali_full                               the peer: NVIDIA DALI's training pipeline (GPU "mixed"
#                                                      decode, DALI threads = WORKERS) through the same model
#                                                      step and clock (benchmarks/dali_peer.py); skipped with
#                                                      the reason when DALI is not installed
# Steady state: each run first takes WARMUP untimed steps (default WORKERS x 2 + 8: the batches the workers
# queued before timing began, prefetch factor 2, are used up before the clock starts), then STEPS timed ones
# (default 200). The data is ImageNet-like (scripts/make_demo_data.py --kind photo: 500x375 photographs with
# scikit-image, 1/f noise without, quality 75-95).
# Each measurement's log and the benchmark_MODE.json train.py writes into --output-dir are in $OUT/NAME/;
# summary.json is read from those files: img/s, host_ms_per_batch (the training thread's milliseconds per
# batch) and tf32 where train.py reports them, the ratios, and the targets: AMP+NHWC >= 6,000 img/s compiled
# and 4,500 eager on one H200, full >= 90% of model-only eager, ours full >= DALI full. A measurement that could not run is null,
# with its reason.
#
# Environment: DEVICE (cuda; cpu runs the same commands on the CPU, the GPU-decode ones skipped), MODEL
# (resnet50), BATCH (256), CROP (224), WORKERS (16), STEPS (200), WARMUP (see above), COMPILE (1; 0 skips the
# compiled measurement), IMAGES (training images generated, default 6000), IMAGE_SIZE (500, their long side),
# MEASURE_TIMEOUT (300 s per measurement), PYTHON (python3), OUT (default: gpu_results/ in the repository),
# DATA (where the images are generated; default a /tmp folder named after the settings, reused when complete;
# a DATA made with other settings is refused), ONLY (measurement names, separated by spaces or commas: run
# these alone, e.g. to repeat one; the others are reported as not selected, and no data is generated when
# only model_* measurements are selected).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$repo/benchmarks/_env.sh"
read_settings gpu_suite.sh out="$repo/gpu_results" python=python3 device=cuda model=resnet50 batch=256 crop=224 \
    workers=16 steps=200 compile=1 images=6000 image_size=500 measure_timeout=300
read_settings gpu_suite.sh warmup=$((workers * 2 + 8))

classes=10
train_per_class=$(((images + classes - 1) / classes))
data=${DATA:-/tmp/gpu_suite_data/photo_${classes}x${train_per_class}+2_${image_size}}

measurements=(model_fp32 model_amp_eager model_amp_compiled data_cpu_decode data_cpu_whole_decode data_gpu_decode
    full_cpu_decode full_gpu_decode dali_data dali_full)
# Why a measurement cannot run here (empty: it runs).
declare -A skip=()
only=${ONLY:-}
if [[ -n ${only//[ ,]/} ]]; then
    declare -A selected=()
    for name in ${only//,/ }; do
        if [[ " ${measurements[*]} " != *" $name "* ]]; then
            echo "gpu_suite.sh: error: ONLY=$only: there is no measurement $name; choose from ${measurements[*]}" >&2
            exit 2
        fi
        selected[$name]=1
    done
fi
mkdir -p "$out" || exit 2
if ! dali_missing=$("$python" -c 'import nvidia.dali' 2>&1); then
    skip[dali_data]="DALI is not installed (${dali_missing##*$'\n'}); pip install nvidia-dali-cuda130 (or -cuda120)"
    skip[dali_full]=${skip[dali_data]}
fi
if [[ $device == cuda ]] && ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    reason="no CUDA device available (torch.cuda.is_available() is False on this machine);"
    reason+=" DEVICE=cpu runs the same commands on the CPU"
    for name in "${measurements[@]}"; do
        skip[$name]=$reason
    done
fi
if [[ $device == cpu ]]; then
    skip[data_gpu_decode]="--decode-device cuda needs CUDA (DEVICE=cpu)"
    skip[full_gpu_decode]="--decode-device cuda needs CUDA (DEVICE=cpu)"
fi
if [[ $compile == 0 ]]; then
    skip[model_amp_compiled]="COMPILE=0"
fi
if [[ -n ${only//[ ,]/} ]]; then
    for name in "${measurements[@]}"; do
        [[ -n ${selected[$name]:-} ]] || skip[$name]="not selected (ONLY=$only)"
    done
fi

needs_data=0
for name in "${measurements[@]}"; do
    [[ -z ${skip[$name]:-} && $name != model_* ]] && needs_data=1
done
if [[ $needs_data == 0 ]]; then
    echo "== data: not generated, no measurement that reads images runs here"
else
    echo "== data: $data"
    if ! "$python" "$repo/scripts/make_demo_data.py" "$data" --kind photo --classes "$classes" \
        --train-per-class "$train_per_class" --val-per-class 2 --size "$image_size"; then
        echo "gpu_suite.sh: error: could not prepare DATA=$data (see the line above)" >&2
        exit 1
    fi
fi

# measure NAME MODE ARGS...: PROGRAM (default train.py) --benchmark MODE, its files in OUT/NAME/
measure() {
    local name=$1 mode=$2
    shift 2
    local dir=$out/$name
    rm -rf "$dir"  # a result left by an earlier run must not pass for this one's
    mkdir -p "$dir"
    if [[ -n ${skip[$name]:-} ]]; then
        echo "== $name: skipped: ${skip[$name]}"
        echo "${skip[$name]}" >"$dir/skipped.txt"
        return
    fi
    local program=${PROGRAM:-$repo/train.py}
    echo "== $name: ${program#"$repo"/} --benchmark $mode $*"
    timeout --kill-after=30 "$measure_timeout" "$python" "$program" --benchmark "$mode" --device "$device" \
        --model "$model" --batch-size "$batch" --train-crop-size "$crop" --benchmark-steps "$steps" \
        --benchmark-warmup "$warmup" --output-dir "$dir" "$@" >"$dir/log.txt" 2>&1
    local rc=$?
    echo "$rc" >"$dir/exit_status"
    if [[ $rc == 0 && -f $dir/benchmark_$mode.json ]]; then
        "$python" -c 'import json, sys; print("   %.1f img/s" % json.load(open(sys.argv[1]))["imgs_per_sec"])' \
            "$dir/benchmark_$mode.json"
    else
        echo "   failed (exit $rc), see $dir/log.txt:"
        tail -n 3 "$dir/log.txt" | sed 's/^/   /'
    fi
}

data_args=(--data-path "$data" --backend fast --workers "$workers")
amp=(--amp --channels-last)
measure model_fp32 model
measure model_amp_eager model "${amp[@]}"
measure model_amp_compiled model "${amp[@]}" --compile
measure data_cpu_decode data "${data_args[@]}"
measure data_cpu_whole_decode data "${data_args[@]}" --roi-decode off
measure data_gpu_decode data "${data_args[@]}" --decode-device cuda
measure full_cpu_decode full "${data_args[@]}" "${amp[@]}"
measure full_gpu_decode full "${data_args[@]}" --decode-device cuda "${amp[@]}"
dali=(--data-path "$data" --dali-threads "$((workers > 0 ? workers : 1))")
PROGRAM=$repo/benchmarks/dali_peer.py measure dali_data data "${dali[@]}" "${amp[@]}"
PROGRAM=$repo/benchmarks/dali_peer.py measure dali_full full "${dali[@]}" "${amp[@]}"

"$python" - "$out" "$measure_timeout" device="$device" model="$model" batch="$batch" crop="$crop" \
    workers="$workers" steps="$steps" warmup="$warmup" images="$images" image_size="$image_size" data="$data" <<'PY'
"""summary.json from the measurements' own files."""
import json, os, sys

out, timeout = sys.argv[1], sys.argv[2]
settings = {k: int(v) if v.isdigit() else v for k, v in (a.split("=", 1) for a in sys.argv[3:])}
MODES = {"model_fp32": "model", "model_amp_eager": "model", "model_amp_compiled": "model",
         "data_cpu_decode": "data", "data_cpu_whole_decode": "data", "data_gpu_decode": "data",
         "full_cpu_decode": "full", "full_gpu_decode": "full", "dali_data": "data", "dali_full": "full"}
FIELDS = ("imgs_per_sec", "host_ms_per_batch", "tf32", "steps", "warmup_steps", "batch_size", "workers",
          "decode_device", "roi_decode", "precision", "memory_format", "compile", "device", "seconds")


def read_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


def why_not(folder):
    """The reason a measurement has no figure: skipped, timed out, or the last line train.py printed."""
    skipped = read_text(os.path.join(folder, "skipped.txt"))
    if skipped:
        return f"skipped: {skipped}"
    status = read_text(os.path.join(folder, "exit_status"))
    if status in ("124", "137"):
        return f"timed out after {timeout} s (MEASURE_TIMEOUT)"
    log = read_text(os.path.join(folder, "log.txt")) or ""
    lines = [ln for ln in log.splitlines() if ln.strip()]
    return f"failed (exit {status}): {lines[-1][-300:] if lines else 'no output'}"


measurements = {}
for name, mode in MODES.items():
    folder = os.path.join(out, name)
    entry = {"log": os.path.join(name, "log.txt"), "result": os.path.join(name, f"benchmark_{mode}.json")}
    try:
        with open(os.path.join(folder, f"benchmark_{mode}.json")) as f:
            result = json.load(f)
        entry.update({k: result.get(k) for k in FIELDS}, reason=None)
    except (OSError, ValueError):
        entry.update({k: None for k in FIELDS}, reason=why_not(folder), result=None)
    measurements[name] = entry
rate = {name: m["imgs_per_sec"] for name, m in measurements.items()}


def ratio(a, b):
    return None if rate[a] is None or not rate[b] else round(rate[a] / rate[b], 3)


def target(value, minimum):
    return {"target": minimum, "value": value, "met": None if value is None else value >= minimum}


summary = {
    "settings": settings,
    "imgs_per_sec": rate,
    "host_ms_per_batch": {name: m["host_ms_per_batch"] for name, m in measurements.items()},
    "reasons": {name: m["reason"] for name, m in measurements.items() if m["reason"]},
    "ratios": {
        "full_cpu_decode_vs_model_amp_eager": ratio("full_cpu_decode", "model_amp_eager"),
        "full_gpu_decode_vs_model_amp_eager": ratio("full_gpu_decode", "model_amp_eager"),
        "data_gpu_vs_cpu_decode": ratio("data_gpu_decode", "data_cpu_decode"),
        "data_roi_vs_whole_decode": ratio("data_cpu_decode", "data_cpu_whole_decode"),
        "model_compiled_vs_eager": ratio("model_amp_compiled", "model_amp_eager"),
        "model_amp_vs_fp32": ratio("model_amp_eager", "model_fp32"),
        "data_cpu_decode_vs_dali_data": ratio("data_cpu_decode", "dali_data"),
        "data_gpu_decode_vs_dali_data": ratio("data_gpu_decode", "dali_data"),
        "full_cpu_decode_vs_dali_full": ratio("full_cpu_decode", "dali_full"),
        "full_gpu_decode_vs_dali_full": ratio("full_gpu_decode", "dali_full"),
    },
    "measurements": measurements,
}
summary["targets"] = {
    "model_amp_compiled": target(rate["model_amp_compiled"], 6000),
    "model_amp_eager": target(rate["model_amp_eager"], 4500),
    "full_cpu_decode_vs_model_amp_eager": target(summary["ratios"]["full_cpu_decode_vs_model_amp_eager"], 0.9),
    "full_gpu_decode_vs_model_amp_eager": target(summary["ratios"]["full_gpu_decode_vs_model_amp_eager"], 0.9),
    # ours at least DALI's full figure: the better of our two decode paths against it
    "full_best_vs_dali_full": target(max((r for r in (summary["ratios"]["full_cpu_decode_vs_dali_full"],
                                                      summary["ratios"]["full_gpu_decode_vs_dali_full"])
                                          if r is not None), default=None), 1.0),
}
with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
print(json.dumps({k: summary[k] for k in ("imgs_per_sec", "ratios", "targets", "reasons")}, indent=2))
print(f"wrote {os.path.join(out, 'summary.json')}")
PY
