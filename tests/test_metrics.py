"""Tests for metrics.py: the metrics.jsonl / summary.json / TensorBoard sink and measurements."""

import json
import os
import subprocess
import sys

import pytest
import torch

import metrics


def make_record(epoch, **overrides):
    """A complete metrics record with plausible values; overrides replace single fields."""
    record = {
        "epoch": epoch,
        "lr": 0.1 / (epoch + 1),
        "train_loss": 5.0 - epoch,
        "train_acc1": 10.0 * (epoch + 1),
        "val_acc1": 20.0 + epoch,
        "val_acc5": 40.0 + epoch,
        "ema_acc1": None,
        "imgs_per_sec": 100.0 + epoch,
        "data_wait_frac": 0.05,
        "epoch_time_s": 61.0,
        "peak_mem_gb": None,
        "peak_host_rss_gb": 1.5 + epoch,
        "bad_images": epoch,
        "eta_s": 3725.0,
        "global_step": 10 * (epoch + 1),
        "train_res": 224,
    }
    record.update(overrides)
    return record


def make_run_info(**overrides):
    info = {
        "status": "finished",
        "model": "resnet50",
        "epochs_planned": 4,
        "wall_time_s": 1234.5,
        "target_acc": None,
        "time_to_target_s": None,
        "epochs_to_target": None,
        "world_size": 2,
        "nnodes": 1,
        "batch_size_per_process": 32,
        "global_batch": 64,
        "precision": "amp_bf16",
        "tf32": None,
        "memory_format": "channels_last",
        "mean_power_w_per_card": None,
        "power_note": "power not measured: no CUDA device (CPU run)",
        "device": "cpu",
        "device_names": ["some cpu"],
        "versions": {"python": "3.11", "torch": "2.14", "torchvision": "0.29", "cuda": None, "cudnn": None},
        "command": "train.py --epochs 4",
    }
    info.update(overrides)
    return info


def read_lines(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# --------------------------------------------------------------------------- metrics.jsonl


def test_log_epoch_writes_parseable_records_and_console_line(tmp_path):
    sink = metrics.MetricsSink(str(tmp_path), is_main=True)
    sink.start(None)
    lines = [sink.log_epoch(make_record(e)) for e in range(3)]
    sink.close()

    records = read_lines(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert set(metrics.RECORD_FIELDS) <= set(records[0])
    assert records[1]["val_acc1"] == 21.0 and records[1]["ema_acc1"] is None
    # The console line ends with the whole run's ETA as H:MM:SS (3725 s = 1:02:05).
    assert lines[0].startswith("Epoch 0")
    assert lines[0].endswith("ETA 1:02:05")
    assert "100.0 img/s" in lines[0]


def test_log_epoch_converts_tensors_and_nan(tmp_path):
    sink = metrics.MetricsSink(str(tmp_path), is_main=True)
    sink.start(None)
    line = sink.log_epoch(make_record(0, train_loss=torch.tensor(float("nan")), train_acc1=torch.tensor(12.5)))
    record = read_lines(tmp_path / "metrics.jsonl")[0]
    # Strict JSON has no NaN: it becomes null in the file but stays visible on the console.
    assert record["train_loss"] is None
    assert record["train_acc1"] == 12.5
    assert "loss nan" in line


def test_log_epoch_fsyncs_each_epoch_after_writing(tmp_path, monkeypatch):
    seen_line_counts = []
    real_fsync = os.fsync

    def recording_fsync(fd):
        # At fsync time the whole line must already be flushed to the file.
        seen_line_counts.append(len(read_lines(tmp_path / "metrics.jsonl")))
        real_fsync(fd)

    sink = metrics.MetricsSink(str(tmp_path), is_main=True)
    sink.start(None)
    monkeypatch.setattr(metrics.os, "fsync", recording_fsync)
    for epoch in range(3):
        sink.log_epoch(make_record(epoch))
    assert seen_line_counts == [1, 2, 3]


def test_log_epoch_rejects_incomplete_record_and_missing_start(tmp_path):
    sink = metrics.MetricsSink(str(tmp_path), is_main=True)
    with pytest.raises(RuntimeError, match="start"):
        sink.log_epoch(make_record(0))
    sink.start(None)
    record = make_record(0)
    del record["imgs_per_sec"]
    with pytest.raises(ValueError, match="imgs_per_sec"):
        sink.log_epoch(record)


def test_start_with_resume_epoch_drops_later_records(tmp_path):
    sink = metrics.MetricsSink(str(tmp_path), is_main=True)
    sink.start(None)
    for epoch in range(5):
        sink.log_epoch(make_record(epoch))
    sink.close()
    # Simulate a crash mid-write: a truncated last line must not block the resume.
    with open(tmp_path / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"epoch": 5, "lr"')

    resumed = metrics.MetricsSink(str(tmp_path), is_main=True)
    with pytest.warns(UserWarning, match="metrics.jsonl:6"):
        resumed.start(3)
    assert [r["epoch"] for r in read_lines(tmp_path / "metrics.jsonl")] == [0, 1, 2]
    resumed.log_epoch(make_record(3, val_acc1=99.0))
    records = read_lines(tmp_path / "metrics.jsonl")
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert records[-1]["val_acc1"] == 99.0
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_fresh_start_moves_old_metrics_aside(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(json.dumps(make_record(0)) + "\n")
    sink = metrics.MetricsSink(str(tmp_path), is_main=True)
    sink.start(None)
    sink.log_epoch(make_record(0, val_acc1=55.0))
    assert [r["val_acc1"] for r in read_lines(tmp_path / "metrics.jsonl")] == [55.0]
    assert [r["val_acc1"] for r in read_lines(tmp_path / "metrics.jsonl.prev")] == [20.0]


def test_non_main_rank_writes_nothing(tmp_path):
    out = tmp_path / "out"
    sink = metrics.MetricsSink(str(out), is_main=False, tensorboard=True)
    sink.start(2)
    assert sink.log_epoch(make_record(2)) == ""
    sink.write_summary({"status": "finished"})
    sink.close()
    assert not out.exists()


def test_no_output_dir_still_returns_console_line(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    sink = metrics.MetricsSink(None, is_main=True)
    sink.start(None)
    assert sink.log_epoch(make_record(0)).endswith("ETA 1:02:05")
    sink.write_summary({"status": "finished"})
    assert os.listdir(tmp_path) == []


def test_format_hms():
    assert metrics.format_hms(0) == "0:00:00"
    assert metrics.format_hms(59.6) == "0:01:00"
    assert metrics.format_hms(27 * 3600 + 62) == "27:01:02"
    assert metrics.format_hms(None) == "n/a"


def test_sink_keeps_the_records_and_reads_the_file_once_at_start(tmp_path, monkeypatch):
    first = metrics.MetricsSink(str(tmp_path), is_main=True)
    first.start(None)
    for epoch in range(4):
        first.log_epoch(make_record(epoch))
    assert [r["epoch"] for r in first.records] == [0, 1, 2, 3]

    reads = []
    real_read = metrics.read_jsonl
    monkeypatch.setattr(metrics, "read_jsonl", lambda path: reads.append(path) or real_read(path))
    resumed = metrics.MetricsSink(str(tmp_path), is_main=True)
    resumed.start(2)  # epochs 2 and 3 are lost with their checkpoint and will run again
    assert [r["epoch"] for r in resumed.records] == [0, 1]
    resumed.log_epoch(make_record(2, train_loss=torch.tensor(float("nan"))))
    resumed.log_epoch(make_record(3, val_acc1=torch.tensor(64.0)))
    assert len(reads) == 1, "metrics.jsonl must be read once, at start(), not per epoch"
    # The records are what the file holds: plain numbers, NaN as None.
    assert resumed.records == read_lines(tmp_path / "metrics.jsonl")
    assert resumed.records[2]["train_loss"] is None and resumed.records[3]["val_acc1"] == 64.0
    summary = metrics.summarize_run(resumed.records, make_run_info())
    assert summary["epochs_run"] == 4 and summary["best_acc1"] == 64.0


def test_sink_keeps_records_without_an_output_dir_and_none_on_other_ranks(tmp_path):
    no_files = metrics.MetricsSink(None, is_main=True)
    no_files.start(None)
    no_files.log_epoch(make_record(0))
    assert [r["epoch"] for r in no_files.records] == [0]
    other_rank = metrics.MetricsSink(str(tmp_path), is_main=False)
    other_rank.start(None)
    other_rank.log_epoch(make_record(0))
    assert other_rank.records == []


# --------------------------------------------------------------------------- reading a run


def test_read_metrics_gives_one_record_per_epoch_in_order(tmp_path):
    lines = [make_record(0), make_record(1, val_acc1=1.0), make_record(2), make_record(1, val_acc1=2.0)]
    text = "".join(json.dumps(r) + "\n" for r in lines) + '{"epoch": 3, "lr'  # cut short by a crash
    (tmp_path / "metrics.jsonl").write_text(text)
    with pytest.warns(UserWarning, match="metrics.jsonl:5"):
        records = metrics.read_metrics(str(tmp_path))
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert records[1]["val_acc1"] == 2.0  # the epoch written again by a resumed run wins
    with pytest.raises(metrics.RunFileError, match=f"{tmp_path / 'empty'}: no metrics.jsonl"):
        metrics.read_metrics(str(tmp_path / "empty"))


def test_read_summary_returns_what_the_sink_wrote_and_refuses_other_schemas(tmp_path):
    sink = metrics.MetricsSink(str(tmp_path), is_main=True)
    sink.start(None)
    summary = metrics.summarize_run([make_record(0)], make_run_info())
    sink.write_summary(summary)
    assert metrics.read_summary(str(tmp_path)) == summary

    (tmp_path / "summary.json").write_text(json.dumps(dict(summary, schema_version=2)))
    with pytest.raises(metrics.RunFileError, match="schema_version 2 is not supported"):
        metrics.read_summary(str(tmp_path))
    (tmp_path / "summary.json").write_text('{"schema_version": 1,')
    with pytest.raises(metrics.RunFileError, match="summary.json: invalid JSON at line 1"):
        metrics.read_summary(str(tmp_path))
    with pytest.raises(metrics.RunFileError, match="no summary.json"):
        metrics.read_summary(str(tmp_path / "missing"))


def test_schema_is_described_once_and_printed_without_torch():
    """The field lists, run_info fields and TensorBoard tags all come from RECORD_SCHEMA / SUMMARY_SCHEMA, and
    the readers' modules import without torch (sys.modules['torch'] = None makes any `import torch` fail)."""
    assert metrics.RECORD_FIELDS[0] == "epoch" and len(set(metrics.RECORD_FIELDS)) == len(metrics.RECORD_SCHEMA)
    assert set(metrics.RUN_INFO_FIELDS) < set(metrics.SUMMARY_FIELDS)
    assert set(metrics.TENSORBOARD_TAGS) < set(metrics.RECORD_FIELDS) and "epoch" not in metrics.TENSORBOARD_TAGS
    code = ("import runpy, sys; sys.modules['torch'] = None; import fileio, prepare_imagenet; "
            "runpy.run_path('metrics.py', run_name='__main__')")
    repo = os.path.dirname(os.path.abspath(metrics.__file__))
    result = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    printed = {line.split("|")[1].strip() for line in result.stdout.splitlines() if line.startswith("| ")}
    assert set(metrics.RECORD_FIELDS) | set(metrics.SUMMARY_FIELDS) <= printed


# --------------------------------------------------------------------------- summary.json


def test_write_summary_is_atomic_and_has_all_fields(tmp_path, monkeypatch):
    sink = metrics.MetricsSink(str(tmp_path), is_main=True)
    sink.start(None)
    summary = metrics.summarize_run([make_record(e) for e in range(3)], make_run_info())

    replaced = []
    fsynced = []
    real_replace, real_fsync = os.replace, os.fsync

    def recording_fsync(fd):
        fsynced.append(fd)
        real_fsync(fd)

    def recording_replace(src, dst):
        # The temporary file must be complete and synced before it takes the final name.
        assert fsynced, "os.replace before any fsync"
        assert json.loads(open(src, encoding="utf-8").read())["schema_version"] == 1
        replaced.append((os.path.dirname(os.path.abspath(src)), os.path.abspath(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(metrics.os, "fsync", recording_fsync)
    monkeypatch.setattr(metrics.os, "replace", recording_replace)
    sink.write_summary(summary)

    assert replaced == [(str(tmp_path), str(tmp_path / "summary.json"))]
    written = json.loads((tmp_path / "summary.json").read_text())
    assert list(written) == list(metrics.SUMMARY_FIELDS)
    assert os.listdir(tmp_path) == ["summary.json"]  # no temporary file left behind


def test_write_summary_failure_keeps_previous_file(tmp_path):
    sink = metrics.MetricsSink(str(tmp_path), is_main=True)
    sink.start(None)
    sink.write_summary({"status": "running"})
    with pytest.raises(TypeError):
        sink.write_summary({"status": "finished", "bad": object()})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"status": "running"}
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]


def test_summarize_run_derives_best_final_and_target():
    records = [
        make_record(0, val_acc1=50.0, val_acc5=70.0, imgs_per_sec=100.0, peak_mem_gb=3.0, bad_images=1),
        make_record(1, val_acc1=76.5, val_acc5=92.0, imgs_per_sec=200.0, peak_mem_gb=4.5, bad_images=0),
        make_record(2, val_acc1=76.0, val_acc5=93.5, imgs_per_sec=300.0, peak_mem_gb=4.0, bad_images=2),
        make_record(3, val_acc1=None, val_acc5=None, imgs_per_sec=None, peak_mem_gb=None, bad_images=0),
    ]
    info = make_run_info(target_acc=75.9, time_to_target_s=600.0, epochs_to_target=2, device="cuda")
    s = metrics.summarize_run(records, info)

    assert (s["best_acc1"], s["best_acc5"], s["best_epoch"]) == (76.5, 92.0, 1)
    # The last epoch was not evaluated: its accuracy is unknown, not copied from earlier.
    assert s["final_acc1"] is None and s["final_acc5"] is None
    assert s["epochs_run"] == 4
    assert s["reached_target"] is True
    assert (s["time_to_target_s"], s["epochs_to_target"]) == (600.0, 2)
    assert s["mean_imgs_per_sec"] == pytest.approx(200.0)
    assert s["peak_mem_gb_per_card"] == 4.5
    assert "max_memory_allocated" in s["peak_mem_note"]
    assert s["peak_host_rss_gb"] == 4.5
    assert s["bad_images"] == 3
    assert s["schema_version"] == 1
    assert s["versions"] == make_run_info()["versions"]
    assert list(s) == list(metrics.SUMMARY_FIELDS)


def test_summarize_run_target_missed_and_no_target():
    records = [make_record(0, val_acc1=60.0), make_record(1, val_acc1=61.0, val_acc5=80.0)]
    missed = metrics.summarize_run(records, make_run_info(target_acc=75.9))
    assert missed["reached_target"] is False
    assert (missed["final_acc1"], missed["final_acc5"]) == (61.0, 80.0)
    assert "not measured" in missed["peak_mem_note"] and missed["peak_mem_gb_per_card"] is None

    no_target = metrics.summarize_run(records, make_run_info())
    assert no_target["target_acc"] is None and no_target["reached_target"] is None


def test_summarize_run_with_no_records_invents_nothing():
    s = metrics.summarize_run([], make_run_info(status="running", target_acc=75.0))
    for field in ("best_acc1", "best_acc5", "best_epoch", "final_acc1", "mean_imgs_per_sec", "bad_images"):
        assert s[field] is None, field
    assert s["epochs_run"] == 0 and s["reached_target"] is False


def test_summarize_run_rejects_bad_run_info():
    with pytest.raises(ValueError, match="precision"):
        metrics.summarize_run([], make_run_info(precision="fp16"))
    info = make_run_info()
    del info["command"]
    with pytest.raises(ValueError, match="command"):
        metrics.summarize_run([], info)


def test_summarize_run_keeps_last_record_of_a_repeated_epoch():
    records = [make_record(0, val_acc1=10.0), make_record(1, val_acc1=90.0), make_record(1, val_acc1=30.0)]
    s = metrics.summarize_run(records, make_run_info())
    assert s["epochs_run"] == 2 and s["best_acc1"] == 30.0


# --------------------------------------------------------------------------- TensorBoard


def test_tensorboard_events_written_and_purged_on_resume(tmp_path):
    pytest.importorskip("tensorboard", reason="TensorBoard logging needs the tensorboard package")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sink = metrics.MetricsSink(str(tmp_path), is_main=True, tensorboard=True)
    sink.start(None)
    for epoch in range(3):
        sink.log_epoch(make_record(epoch))
    sink.close()
    tb_dir = tmp_path / "tensorboard"
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tb_dir))

    resumed = metrics.MetricsSink(str(tmp_path), is_main=True, tensorboard=True)
    resumed.start(2)
    resumed.log_epoch(make_record(2, val_acc1=88.0))
    resumed.close()

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    val = [(e.step, e.value) for e in acc.Scalars("val/acc1")]
    # Epoch 2 from the abandoned run is purged; the resumed epoch 2 replaces it.
    assert val == [(0, 20.0), (1, 21.0), (2, 88.0)]
    assert [e.step for e in acc.Scalars("train/loss")] == [0, 1, 2]
    assert "val/ema_acc1" not in acc.Tags()["scalars"]  # null values are not logged


def test_tensorboard_missing_package_fails_early_with_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(RuntimeError, match="pip install tensorboard"):
        metrics.MetricsSink(str(tmp_path), is_main=True, tensorboard=True)


# --------------------------------------------------------------------------- measurements


def test_peak_host_rss_is_plausible():
    rss = metrics.peak_host_rss_gb()
    # A process that imported numpy holds tens of MiB at least, and far less than 1 TiB.
    assert 0.01 < rss < 1024
