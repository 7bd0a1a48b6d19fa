#!/usr/bin/env bash
# What only a GPU can check, in one command: at most ~5 minutes on one H200.
#
#   bash benchmarks/gpu_check.sh          # $OUT/gpu_check.json, one folder per item under $OUT/gpu_check/
#
# Items, cheapest first, so that a machine taken back early still leaves the most important answers:
#   decode_race     benchmarks/decode_race_check.py: batches decoded by nvImageCodec (nvJPEG, crop regions)
#                   through the real DeviceLoader, its decode thread's stream held back so that the nvJPEG stream
#                   race (pytorch/vision#9606) would show, every batch compared with the CPU decode of the same
#                   crops; fallback_images counts the images decoded again on the CPU (declined or all zero)
#   host_time       train.py --benchmark data --decode-device cuda: host_ms_per_batch, the milliseconds the
#                   training thread spends obtaining each batch while the decode thread prepares the next ones
#                   (read from the run's benchmark_data.json)
#   deterministic   --use-deterministic-algorithms for STEPS steps, twice with one seed: it runs, and both agree
#   compile_resume  --amp --channels-last --compile --model-ema for STEPS steps and a checkpoint, then
#                   --resume auto: the log says "resumed from" that checkpoint, and the next epoch is trained
# Each item: status ok / failed / skipped, reason, figures, log. Without CUDA every item is skipped with the
# reason, and the JSON is still written. Exit status: 1 when an item failed, 0 otherwise.
#
# Environment: DEVICE (cuda; cpu runs the same commands on the CPU, host_time with CPU decoding), MODEL
# (resnet50), CROP (224), BATCH (128), STEPS (20), COMPILE (1; 0 drops --compile), WORKERS (8), RACE_BATCHES
# (12), HOST_STEPS (100), IMAGE_SIZE (500, the generated images' long side), ITEM_TIMEOUT (240 s per command),
# PYTHON (python3), OUT (default: gpu_results/ in the repository), DATA (where the photos are generated;
# default a /tmp folder named after the settings, reused when complete).
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
source "$repo/benchmarks/_env.sh"
read_settings gpu_check.sh out="$repo/gpu_results" python=python3 device=cuda model=resnet50 crop=224 batch=128 \
    steps=20 compile=1 workers=8 race_batches=12 host_steps=100 image_size=500 item_timeout=240

# Enough training images for STEPS full batches, one validation batch, 10 classes.
classes=10
train_per_class=$(((batch * steps + classes - 1) / classes))
val_per_class=$(((batch + classes - 1) / classes))
data=${DATA:-/tmp/gpu_check_data/photo_${classes}x${train_per_class}+${val_per_class}_${image_size}}
items=$out/gpu_check
mkdir -p "$items" || exit 2
started=$SECONDS

# The checks of each item's files, and the final JSON: in Python, reading train.py's files through its modules.
read -r -d '' verify_py <<'PY'
import json, math, os, re, sys

repo, command, item_dir = sys.argv[1], sys.argv[2], sys.argv[3]
args = sys.argv[4:]
sys.path.insert(0, repo)


def last_line(path):
    try:
        with open(path, errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
    except OSError:
        return f"{path} was not written"
    return lines[-1][-300:] if lines else f"{os.path.basename(path)} is empty"


def run_failed(rc, log, timeout):
    """None when the command succeeded, else why it did not."""
    rc = int(rc)
    if rc == 0:
        return None
    if rc in (124, 137):
        return f"timed out after {timeout} s (ITEM_TIMEOUT); see {log}"
    return f"exited {rc}: {last_line(log)}"


def records(run_dir):
    import metrics

    path = os.path.join(run_dir, "metrics.jsonl")
    return metrics.read_jsonl(path) if os.path.isfile(path) else []


def write(status, reason=None, figures=None, logs=()):
    item = {"status": status, "reason": reason, "figures": figures or {},
            "log": [os.path.relpath(p, os.path.dirname(os.path.dirname(item_dir))) for p in logs]}
    with open(os.path.join(item_dir, "item.json"), "w") as f:
        json.dump(item, f, indent=2)
    print(f"   {status}" + (f": {reason}" if reason else ""))


def compile_resume(rc1, rc2, seconds1, seconds2, timeout):
    run1, run2 = (os.path.join(item_dir, n) for n in ("first.log", "resume.log"))
    figures = {"run_seconds": [int(seconds1), int(seconds2) if rc2 != "" else None]}
    why = run_failed(rc1, run1, timeout)
    if why is None and not os.path.isfile(os.path.join(item_dir, "checkpoint.pth")):
        why = "the first run wrote no checkpoint.pth"
    if why is not None:
        return write("failed", f"first run: {why}", figures, [run1])
    why = run_failed(rc2, run2, timeout)
    if why is not None:
        return write("failed", f"resume: {why}", figures, [run1, run2])
    with open(run2, errors="replace") as f:
        resumed = [ln.strip() for ln in f if ln.startswith("resumed from")]
    recs = records(item_dir)
    figures.update(resumed_line=resumed[0] if resumed else None, epochs=[r.get("epoch") for r in recs],
                   train_loss=[r.get("train_loss") for r in recs], val_acc1=[r.get("val_acc1") for r in recs],
                   ema_acc1=[r.get("ema_acc1") for r in recs], imgs_per_sec=[r.get("imgs_per_sec") for r in recs],
                   peak_mem_gb=[r.get("peak_mem_gb") for r in recs])
    match = re.search(r"resumed from .*: epoch (\d+), step (\d+)", resumed[0]) if resumed else None
    if match is None:
        return write("failed", "the resumed run logged no 'resumed from ...: epoch E, step S' line", figures,
                     [run1, run2])
    if (int(match.group(1)), int(match.group(2))) != (1, 0):
        return write("failed", f"resumed at epoch {match.group(1)} step {match.group(2)}, not epoch 1 step 0",
                     figures, [run1, run2])
    if figures["epochs"] != [0, 1]:
        return write("failed", f"metrics.jsonl holds epochs {figures['epochs']}, not [0, 1]", figures, [run1, run2])
    if not all(isinstance(x, (int, float)) and math.isfinite(x) for x in figures["train_loss"]):
        return write("failed", f"non-finite training loss {figures['train_loss']}", figures, [run1, run2])
    if None in figures["ema_acc1"]:
        return write("failed", "the EMA model was not evaluated in every epoch", figures, [run1, run2])
    missing = [n for n in ("model_0.pth", "model_1.pth") if not os.path.isfile(os.path.join(item_dir, n))]
    if missing:
        return write("failed", f"missing epoch checkpoints: {', '.join(missing)}", figures, [run1, run2])
    write("ok", None, figures, [run1, run2])


def deterministic(rc_a, rc_b, timeout):
    logs = [os.path.join(item_dir, n, "train.log") for n in ("run_a", "run_b")]
    for rc, log in zip((rc_a, rc_b), logs):
        why = run_failed(rc, log, timeout)
        if why is not None:
            return write("failed", why, {}, logs)
    first, second = (records(os.path.join(item_dir, n)) for n in ("run_a", "run_b"))
    keys = ("train_loss", "train_acc1", "val_acc1")
    a = {k: first[-1].get(k) if first else None for k in keys}
    b = {k: second[-1].get(k) if second else None for k in keys}
    figures = {"run_a": a, "run_b": b}
    if a["train_loss"] is None:
        return write("failed", "no epoch record in metrics.jsonl", figures, logs)
    if a != b:
        return write("failed", "two runs with the same seed differ", figures, logs)
    write("ok", None, figures, logs)


def decode_race(rc, timeout):
    log, result = os.path.join(item_dir, "check.log"), os.path.join(item_dir, "decode_race.json")
    try:
        with open(result) as f:
            figures = json.load(f)
    except (OSError, ValueError):
        return write("failed", run_failed(rc, log, timeout) or "decode_race.json was not written", {}, [log])
    race = figures.get("race", {})
    if int(rc) == 1 or figures.get("corrupted"):
        return write("failed", race.get("reason") or f"{figures.get('corrupted')} corrupted batches", figures, [log])
    why = run_failed(rc, log, timeout)
    if why is not None:
        return write("failed", why, figures, [log])
    write("ok", race.get("reason"), figures, [log])


def host_time(rc, decode_device, timeout):
    log, result = os.path.join(item_dir, "benchmark.log"), os.path.join(item_dir, "benchmark_data.json")
    why = run_failed(rc, log, timeout)
    if why is not None:
        return write("failed", why, {}, [log])
    try:
        with open(result) as f:
            bench = json.load(f)
    except (OSError, ValueError):
        return write("failed", "benchmark_data.json was not written", {}, [log])
    keys = ("host_ms_per_batch", "imgs_per_sec", "steps", "warmup_steps", "batch_size", "workers", "decode_device",
            "device", "tf32")
    figures = {k: bench.get(k) for k in keys}
    notes = []
    if decode_device != "cuda":
        notes.append("DEVICE=cpu: measured with CPU decoding (--decode-device cuda needs CUDA)")
    if figures["host_ms_per_batch"] is None:
        notes.append("train.py does not report host_ms_per_batch yet")
    write("ok", "; ".join(notes) or None, figures, [log])


def skip(reason):
    write("skipped", reason)


def assemble(out_json, seconds, *settings):
    names = ("decode_race", "host_time", "deterministic", "compile_resume")
    pairs = (s.split("=", 1) for s in settings)
    result = {"settings": {k: int(v) if v.isdigit() else v for k, v in pairs}, "items": {}}
    for name in names:
        try:
            with open(os.path.join(item_dir, name, "item.json")) as f:
                result["items"][name] = json.load(f)
        except (OSError, ValueError):
            result["items"][name] = {"status": "failed", "reason": "the item wrote no result", "figures": {},
                                     "log": []}
    result["failed"] = [n for n in names if result["items"][n]["status"] == "failed"]
    result["seconds"] = int(seconds)
    with open(out_json, "w") as f:
        json.dump(result, f, indent=2)
    for name in names:
        item = result["items"][name]
        print(f"{name:15s} {item['status']:8s} {item['reason'] or ''}")
    print(f"wrote {out_json}")
    return 1 if result["failed"] else 0


sys.exit({"compile_resume": compile_resume, "deterministic": deterministic, "decode_race": decode_race,
          "host_time": host_time, "skip": skip, "assemble": assemble}[command](*args))
PY

verify() {  # verify COMMAND ITEM_DIR ARGS...: run one function of the program above
    "$python" -c "$verify_py" "$repo" "$@"
}

begin() {  # begin NAME: a fresh folder for the item (stale files must not pass for this run's)
    dir=$items/$1
    rm -rf "$dir"
    mkdir -p "$dir"
    echo "== $1"
}

timed() {  # timed LOG COMMAND...: run with the per-command limit, output to LOG; sets rc and took
    local log=$1
    shift
    local t0=$SECONDS
    timeout --kill-after=30 "$item_timeout" "$@" >"$log" 2>&1
    rc=$?
    took=$((SECONDS - t0))
}

finish() {
    verify assemble "$items" "$out/gpu_check.json" "$((SECONDS - started))" device="$device" model="$model" \
        crop="$crop" batch="$batch" steps="$steps" compile="$compile" workers="$workers" \
        race_batches="$race_batches" host_steps="$host_steps" image_size="$image_size" data="$data"
    exit $?
}

if [[ $device == cuda ]] && ! "$python" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    reason="no CUDA device available (torch.cuda.is_available() is False on this machine);"
    reason+=" DEVICE=cpu runs the same commands on the CPU"
    for name in decode_race host_time deterministic compile_resume; do
        begin "$name"
        verify skip "$dir" "$reason"
    done
    finish
fi

echo "== data: $data"
if ! "$python" "$repo/scripts/make_demo_data.py" "$data" --kind photo --classes "$classes" \
    --train-per-class "$train_per_class" --val-per-class "$val_per_class" --size "$image_size"; then
    echo "gpu_check.sh: error: could not prepare DATA=$data (see the line above)" >&2
    exit 2
fi

resize=$((crop * 8 / 7))  # 224 -> 256, the reference's evaluation resize
common=(--data-path "$data" --device "$device" --model "$model" --batch-size "$batch" --workers "$workers"
    --backend fast --train-crop-size "$crop" --val-resize-size "$resize" --val-crop-size "$crop" --seed 0
    --print-freq 5 --max-steps-per-epoch "$steps")
compile_flag=()
[[ $compile == 0 ]] || compile_flag=(--compile)

begin decode_race
timed "$dir/check.log" "$python" "$repo/benchmarks/decode_race_check.py" --data "$data" --device "$device" \
    --batch-size "$batch" --batches "$race_batches" --crop-size "$crop" --workers "$workers" \
    --json "$dir/decode_race.json"
verify decode_race "$dir" "$rc" "$item_timeout"

begin host_time
decode_device=$device
timed "$dir/benchmark.log" "$python" "$repo/train.py" --benchmark data --data-path "$data" --device "$device" \
    --decode-device "$decode_device" --backend fast --batch-size "$batch" --workers "$workers" \
    --train-crop-size "$crop" --benchmark-steps "$host_steps" --benchmark-warmup $((workers * 2 + 8)) \
    --output-dir "$dir"
verify host_time "$dir" "$rc" "$decode_device" "$item_timeout"

begin deterministic
mkdir -p "$dir/run_a" "$dir/run_b"
timed "$dir/run_a/train.log" "$python" "$repo/train.py" "${common[@]}" --use-deterministic-algorithms --amp \
    --channels-last --epochs 1 --output-dir "$dir/run_a"
rc_a=$rc rc_b=1
if [[ $rc_a == 0 ]]; then
    timed "$dir/run_b/train.log" "$python" "$repo/train.py" "${common[@]}" --use-deterministic-algorithms --amp \
        --channels-last --epochs 1 --output-dir "$dir/run_b"
    rc_b=$rc
fi
verify deterministic "$dir" "$rc_a" "$rc_b" "$item_timeout"

begin compile_resume
amp_ema=(--amp --channels-last "${compile_flag[@]}" --model-ema --model-ema-steps 4)  # EMA updates within STEPS
timed "$dir/first.log" "$python" "$repo/train.py" "${common[@]}" "${amp_ema[@]}" --epochs 1 --output-dir "$dir"
rc1=$rc took1=$took rc2="" took2=0
if [[ $rc1 == 0 ]]; then
    timed "$dir/resume.log" "$python" "$repo/train.py" "${common[@]}" "${amp_ema[@]}" --epochs 2 --resume auto \
        --output-dir "$dir"
    rc2=$rc took2=$took
fi
verify compile_resume "$dir" "$rc1" "$rc2" "$took1" "$took2" "$item_timeout"

finish
