"""`waveglow train` on a tiny architecture and a handful of synthetic speech-like clips (CPU)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import run_cli

from waveglow_cli import training as T
from waveglow_cli.checkpoints.cache import ensure_checkpoint
from waveglow_cli.checkpoints.reader import read_checkpoint
from waveglow_cli.errors import UsageError
from waveglow_cli.features.mel import MelConfig
from waveglow_cli.model.waveglow import WaveGlowConfig
from waveglow_cli.settings import Settings, Shard
from waveglow_cli.training import loop as training_loop

SR = 22050
# n_mel_channels 16 keeps the upsampler (n_mels^2 x 1024 weights) small enough for CPU tests.
TINY = ["--n-channels", "8", "--n-layers", "2", "--n-flows", "4", "--n-group", "8",
        "--n-early-every", "2", "--n-early-size", "2", "--n-mel-channels", "16",
        "--segment-length", "4096"]
ENV = {"OMP_NUM_THREADS": "1"}


def speech_like(rng: np.random.Generator, seconds: float) -> np.ndarray:
    """A voiced, formant-shaped harmonic signal with a wavering pitch, syllable envelope and
    noise in the pauses."""
    n = int(SR * seconds)
    t = np.arange(n) / SR
    f0 = rng.uniform(100, 220) * (1 + 0.15 * np.sin(2 * np.pi * rng.uniform(1, 4) * t))
    phase = 2 * np.pi * np.cumsum(f0) / SR
    formants = rng.uniform([300, 900, 2200], [900, 2200, 3200])
    x = sum(np.sin(k * phase) / k * sum(np.exp(-((k * f0 - f) / 150.0) ** 2) for f in formants)
            for k in range(1, 30))
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(2, 5) * t + rng.uniform(0, 6)), 0, None)
    x = x * np.sqrt(envelope) + rng.standard_normal(n) * 0.02 * (envelope < 0.04)
    return (0.3 * x / np.max(np.abs(x))).astype(np.float32)


def write_clips(folder: Path, count: int, seed: int = 0) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        path = folder / f"clip{i}.wav"
        sf.write(path, speech_like(rng, rng.uniform(0.6, 1.2)), SR)
        paths.append(path)
    return paths


def metrics(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("clips")
    write_clips(folder / "speech", 6)
    return folder / "speech"


@pytest.fixture(scope="module")
def trained_run(clips, tmp_path_factory) -> Path:
    """300 steps, checkpoints at 150 and 300, a fifth of the clips held out."""
    run_dir = tmp_path_factory.mktemp("runs") / "run"
    result = run_cli("train", clips, "-o", run_dir, *TINY, "--batch-size", "4",
                     "--max-steps", "300", "--checkpoint-every", "150", "--keep", "2",
                     "--lr", "1e-3", "--seed", "1", "--val", "0.2", env=ENV)
    assert result.returncode == 0, result.stderr.decode()
    assert result.stdout.decode().strip() == str(run_dir / "step_000300.safetensors")
    return run_dir


def test_loss_goes_down(trained_run):
    records = metrics(trained_run)
    assert [r["step"] for r in records] == list(range(1, 301))
    first = statistics.mean(r["loss"] for r in records[:20])
    last = statistics.mean(r["loss"] for r in records[-20:])
    assert last < first - 1.0, (first, last)
    validated = [r for r in records if "val_loss" in r]
    assert [r["step"] for r in validated] == [150, 300]
    assert validated[1]["val_loss"] < validated[0]["val_loss"] < first
    assert sorted(p.name for p in trained_run.iterdir()) == [
        "metrics.jsonl", "run.json", "step_000150.safetensors", "step_000150.state.pt",
        "step_000300.safetensors", "step_000300.state.pt"]


def test_checkpoint_is_our_format_with_mel_settings(trained_run):
    checkpoint = read_checkpoint(trained_run / "step_000300.safetensors")
    assert checkpoint.source_format == "waveglow-cli safetensors"
    assert checkpoint.config.n_channels == 8 and checkpoint.config.n_flows == 4
    assert checkpoint.sample_rate == SR
    assert MelConfig.from_dict(checkpoint.mel) == MelConfig(n_mels=16)
    assert checkpoint.metadata["step"] == "300"
    state = torch.load(trained_run / "step_000300.state.pt", weights_only=True)
    assert state["step"] == 300 and state["optimizer"]["state"]


def test_resume_reproduces_the_uninterrupted_run(trained_run, tmp_path):
    """A run stopped after its step-150 checkpoint (its metrics went on to step 300) and
    resumed gives exactly the losses of the run that was never stopped."""
    run_dir = tmp_path / "resumed"
    run_dir.mkdir()
    for name in ("run.json", "metrics.jsonl", "step_000150.safetensors", "step_000150.state.pt"):
        shutil.copy(trained_run / name, run_dir / name)
    result = run_cli("train", "-o", run_dir, "--resume", "--max-steps", "170", env=ENV)
    assert result.returncode == 0, result.stderr.decode()
    resumed, original = metrics(run_dir), metrics(trained_run)
    assert [r["step"] for r in resumed] == list(range(1, 171))
    for a, b in zip(resumed[150:], original[150:170]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6, rel=0)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-5)
    assert (run_dir / "step_000170.safetensors").is_file()


def test_refuses_an_existing_run_without_resume(trained_run, clips):
    result = run_cli("train", clips, "-o", trained_run, *TINY, "--max-steps", "1", env=ENV)
    assert result.returncode == 2
    assert "--resume" in result.stderr.decode()


def test_run_dir_synthesises_and_resolves_to_latest(trained_run, clips, tmp_path):
    latest = trained_run / "step_000300.safetensors"
    assert ensure_checkpoint(str(trained_run), Settings.from_env({"WAVEGLOW_HOME": str(tmp_path)})
                             ) == latest
    out = tmp_path / "out.wav"
    result = run_cli("synth", clips / "clip0.wav", "-o", out, "-c", trained_run, "--seed", "1")
    assert result.returncode == 0, result.stderr.decode()
    audio, rate = sf.read(out, dtype="float32")
    assert rate == SR and audio.size > SR // 2 and np.isfinite(audio).all()
    assert np.abs(audio).max() > 1e-3
    out2 = tmp_path / "out2.wav"
    result = run_cli("synth", clips / "clip0.wav", "-o", out2, "-c", latest, "--seed", "1")
    assert result.returncode == 0, result.stderr.decode()
    assert np.array_equal(sf.read(out2, dtype="float32")[0], audio)
    info = run_cli("info", trained_run, "--json")
    assert info.returncode == 0 and json.loads(info.stdout)["path"] == str(latest)


def test_fine_tune_from_checkpoint(trained_run, clips, tmp_path):
    run_dir = tmp_path / "ft"
    result = run_cli("train", clips, "-o", run_dir, "--from", trained_run, "--batch-size", "4",
                     "--segment-length", "4096", "--max-steps", "2", "--seed", "1", env=ENV)
    assert result.returncode == 0, result.stderr.decode()
    start = metrics(trained_run)[-1]["loss"]
    first = metrics(run_dir)[0]["loss"]
    assert first < -1.0 and abs(first - start) < 1.0, (first, start)
    assert read_checkpoint(run_dir / "step_000002.safetensors").config.n_mel_channels == 16
    recorded = json.loads((run_dir / "run.json").read_text())["options"]
    assert (recorded["n_channels"], recorded["n_flows"], recorded["n_mel_channels"]) == (8, 4, 16)
    refused = run_cli("train", clips, "-o", tmp_path / "ft2", "--from", trained_run,
                      "--n-channels", "16", "--max-steps", "1", env=ENV)
    assert refused.returncode == 2 and "architecture comes from --from" in refused.stderr.decode()


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_after_a_step_with_a_checkpoint_that_resumes_exactly(
        trained_run, clips, tmp_path, signum):
    """Ctrl-C (or a scheduler's SIGTERM) mid-run: the run finishes its step, saves it, exits
    128 + signal, and --resume continues with exactly the uninterrupted run's losses."""
    run_dir = tmp_path / "stopped"
    process = subprocess.Popen(
        [sys.executable, "-m", "waveglow_cli", "train", str(clips), "-o", str(run_dir), *TINY,
         "--batch-size", "4", "--max-steps", "300", "--checkpoint-every", "150", "--keep", "2",
         "--lr", "1e-3", "--seed", "1", "--val", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env={**os.environ, "WAVEGLOW_OFFLINE": "1", **ENV})
    try:
        deadline = time.monotonic() + 120
        while not ((run_dir / "metrics.jsonl").is_file() and len(metrics(run_dir)) >= 5):
            assert process.poll() is None and time.monotonic() < deadline, \
                process.stderr.read().decode() if process.poll() is not None else "no steps"
            time.sleep(0.02)
        process.send_signal(signum)
        out, err = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 128 + signum, err.decode()
    step = max(T.checkpoint_steps(run_dir))
    assert 5 <= step < 300
    message = err.decode().strip().splitlines()[-1]
    assert message.startswith(f"error: stopped at step {step} by {signal.Signals(signum).name}")
    assert str(run_dir / f"step_{step:06d}.safetensors") in message and "--resume" in message
    assert out == b""  # stdout carries the final checkpoint only on success
    assert metrics(run_dir)[-1]["step"] == step

    result = run_cli("train", "-o", run_dir, "--resume", "--max-steps", step + 10, env=ENV)
    assert result.returncode == 0, result.stderr.decode()
    resumed, original = metrics(run_dir), metrics(trained_run)
    assert [r["step"] for r in resumed] == list(range(1, step + 11))
    for a, b in zip(resumed[step:], original[step:step + 10]):
        assert a["loss"] == pytest.approx(b["loss"], abs=1e-6, rel=0)


def test_tensorboard_scalars_follow_metrics_and_a_resume_replaces_the_lost_steps(clips,
                                                                                   tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = tmp_path / "tb"
    common = [*TINY, "--batch-size", "2", "--checkpoint-every", "3", "--seed", "3",
              "--val", "0.34", "--val-every", "2", "-q"]
    first = run_cli("train", clips, "-o", run_dir, *common, "--max-steps", "6",
                    "--tensorboard", env=ENV)
    assert first.returncode == 0, first.stderr.decode()
    for path in run_dir.glob("step_000006.*"):  # as if the run had died after step 6's logs
        path.unlink()
    resumed = run_cli("train", "-o", run_dir, "--resume", "--max-steps", "8", env=ENV)
    assert resumed.returncode == 0, resumed.stderr.decode()

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    records = metrics(run_dir)
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [r["step"] for r in records] == list(range(1, 9))
    assert [e.value for e in losses] == pytest.approx([r["loss"] for r in records], rel=1e-6)
    assert [e.step for e in events.Scalars("val/loss")] == [2, 4, 6, 8]
    assert {"train/lr", "train/grad_norm", "train/segments_per_s"} <= set(
        events.Tags()["scalars"])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_torchrun_two_processes_equal_one(clips, tmp_path):
    """2 processes x batch 2 (gloo, DDP) see the same segments as 1 process x batch 4."""
    common = [*TINY, "--max-steps", "6", "--checkpoint-every", "6", "--seed", "5",
              "--val", "0.34", "-q"]
    ddp_dir, single_dir = tmp_path / "ddp", tmp_path / "single"
    ddp = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         "-m", "waveglow_cli", "train", str(clips), "-o", str(ddp_dir), "--batch-size", "2",
         *common], capture_output=True, env={**os.environ, "WAVEGLOW_OFFLINE": "1", **ENV},
        timeout=300)
    assert ddp.returncode == 0, ddp.stderr.decode()
    assert sorted(p.name for p in ddp_dir.iterdir()) == [
        "metrics.jsonl", "run.json", "step_000006.safetensors", "step_000006.state.pt"]
    assert ddp.stdout.decode().strip() == str(ddp_dir / "step_000006.safetensors")  # rank 0 only
    single = run_cli("train", clips, "-o", single_dir, "--batch-size", "4", *common, env=ENV)
    assert single.returncode == 0, single.stderr.decode()
    a, b = metrics(ddp_dir), metrics(single_dir)
    assert [r["step"] for r in a] == list(range(1, 7))
    for x, y in zip(a, b):
        assert x["loss"] == pytest.approx(y["loss"], abs=1e-5)
    assert a[-1]["val_loss"] == pytest.approx(b[-1]["val_loss"], abs=1e-5)
    wa = read_checkpoint(ddp_dir / "step_000006.safetensors").state_dict
    wb = read_checkpoint(single_dir / "step_000006.safetensors").state_dict
    assert max(float((wa[k] - wb[k]).abs().max()) for k in wa) < 1e-4


def test_ctrl_c_under_torchrun_stops_every_rank_after_the_same_step(clips, tmp_path):
    """Ctrl-C reaches the whole process group: both ranks stop after one step, rank 0 saves
    it, and one line (not one per rank) says where."""
    run_dir = tmp_path / "ddp"
    process = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
         "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
         "-m", "waveglow_cli", "train", str(clips), "-o", str(run_dir), *TINY,
         "--batch-size", "2", "--max-steps", "100000", "--seed", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, "WAVEGLOW_OFFLINE": "1", **ENV})
    try:
        deadline = time.monotonic() + 120
        while not ((run_dir / "metrics.jsonl").is_file() and len(metrics(run_dir)) >= 3):
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        os.killpg(process.pid, signal.SIGINT)  # what a terminal does on Ctrl-C
        _, err = process.communicate(timeout=120)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    [step] = T.checkpoint_steps(run_dir)
    stopped = [line for line in err.decode().splitlines() if line.startswith("error: stopped")]
    assert stopped == [f"error: stopped at step {step} by SIGINT; saved "
                       f"{run_dir / f'step_{step:06d}.safetensors'}; continue with: "
                       f"waveglow train -o {run_dir} --resume"]
    assert metrics(run_dir)[-1]["step"] == step


def test_bad_files_are_skipped_with_a_note(clips, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("clip0.wav", "clip1.wav"):
        shutil.copy(clips / name, data / name)
    (data / "text.wav").write_text("not audio at all")
    (data / "empty.wav").write_bytes(b"")
    sf.write(data / "short.wav", np.zeros(100, np.float32), SR)
    stereo = np.stack([speech_like(np.random.default_rng(3), 1.0)] * 2, axis=1)
    sf.write(data / "stereo44k.flac", stereo[::1], 44100)
    file_list = tmp_path / "list.txt"
    file_list.write_text("# a Tacotron 2 style filelist\ndata/clip0.wav|some text\n"
                         "data/missing.wav|gone\n\n")
    run_dir = tmp_path / "run"
    result = run_cli("train", data, file_list, "-o", run_dir, *TINY, "--batch-size", "2",
                     "--max-steps", "2", "--seed", "1", env=ENV)
    stderr = result.stderr.decode()
    assert result.returncode == 0, stderr
    for name, reason in (("text.wav", "not a readable audio file"), ("empty.wav", "empty"),
                         ("short.wav", "too short"), ("missing.wav", "no such file")):
        assert any(name in line and reason in line and line.startswith("note: skipped")
                   for line in stderr.splitlines()), (name, stderr)
    assert "training on 3 files" in stderr
    assert "resampled to 22050 Hz" in stderr
    assert (run_dir / "step_000002.safetensors").is_file()


def test_no_usable_data_is_a_usage_error(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    (data / "text.wav").write_text("not audio")
    result = run_cli("train", data, "-o", tmp_path / "run", *TINY, "--max-steps", "1")
    assert result.returncode == 2
    assert "no usable training audio" in result.stderr.decode()


# ---------------------------------------------------------------------------------------------
# In-process pieces


def _options(data: Path, run_dir: Path, **changes) -> T.TrainOptions:
    model = WaveGlowConfig(n_channels=8, n_layers=2, n_flows=4, n_group=8, n_early_every=2,
                           n_early_size=2, n_mel_channels=16)
    values = dict(data=[str(data)], run_dir=run_dir, model=model, segment_length=4096,
                  batch_size=2, max_steps=6, checkpoint_every=2, seed=1, quiet=True)
    values.update(changes)
    return T.TrainOptions(**values)


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(clips, tmp_path, monkeypatch,
                                                           one_thread):
    calls = {"n": 0}
    real_loss = training_loop.waveglow_loss

    def loss_that_fails_at_step_5(*args, **kwargs):
        calls["n"] += 1
        value = real_loss(*args, **kwargs)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(training_loop, "waveglow_loss", loss_that_fails_at_step_5)
    run_dir = tmp_path / "run"
    with pytest.raises(T.TrainingError) as caught:
        T.train(_options(clips, run_dir), settings=Settings.from_env({}), shard=Shard())
    message = str(caught.value)
    assert "step 5" in message and "nan" in message
    assert str(run_dir / "step_000004.safetensors") in message
    assert T.checkpoint_steps(run_dir) == [2, 4]
    assert metrics(run_dir)[-1] == {"step": 5, "loss": None, "error": "non-finite loss (nan)"}
    read_checkpoint(run_dir / "step_000004.safetensors")  # intact


def test_step_batches_shard_one_stream():
    one = list(T.StepBatches(3, 5, 4, 0, 1))
    two = [list(T.StepBatches(3, 5, 2, r, 2)) for r in range(2)]
    assert [a + b for a, b in zip(*two)] == one
    assert one[0] == [8, 9, 10, 11]


def test_dataset_is_deterministic_and_skips_files_that_fail_later(clips, tmp_path):
    mel_config = MelConfig(n_mels=16)
    files, skipped, _ = T.probe(sorted(clips.glob("*.wav")), mel_config, 1024)
    assert len(files) == 6 and not skipped
    a = T.SegmentDataset(files, mel_config, 4096, seed=7, min_samples=1024)
    b = T.SegmentDataset(files, mel_config, 4096, seed=7, min_samples=1024)
    for i in (0, 5, 6, 23):
        assert torch.equal(a[i][1], b[i][1]) and torch.equal(a[i][0], b[i][0])
    assert sorted(a.file_index(i) for i in range(6)) == list(range(6))  # an epoch: each once
    mel, audio = a[0]
    assert audio.shape == (4096,) and mel.shape == (16, 17)
    # A file that was fine at start-up and breaks later is skipped with a note.
    broken = tmp_path / "broken.wav"
    shutil.copy(files[0].path, broken)
    notes = []
    c = T.SegmentDataset([T.AudioFile(broken, files[0].samples), *files[1:]], mel_config, 4096,
                         seed=7, min_samples=1024, note=notes.append)
    broken.write_text("gone bad")
    victim = next(i for i in range(12) if c.file_index(i) == 0)
    _, audio = c[victim]
    assert audio.shape == (4096,) and notes and "broken.wav" in notes[0]


def test_short_files_are_zero_padded_like_mel2samp():
    mono = np.ones(3000, np.float32)
    segment = T.take_segment(mono, 4096, 0)
    assert segment.shape == (4096,) and segment[:3000].all() and not segment[3000:].any()


def test_file_lists_and_validation_fraction(clips, tmp_path):
    listed = tmp_path / "lists" / "train.txt"
    listed.parent.mkdir()
    shutil.copy(clips / "clip1.wav", listed.parent / "local.wav")
    listed.write_text(f"local.wav|text\n{clips / 'clip0.wav'}\n# comment\n\n")
    assert T.collect_files([str(listed)]) == [listed.parent / "local.wav", clips / "clip0.wav"]
    mel_config = MelConfig(n_mels=16)
    files, _, _ = T.probe(T.collect_files([str(clips)]), mel_config, 1024)
    train, val, _ = T.split_validation(files, "0.34", 3, mel_config, 1024)
    assert len(val) == 2 and len(train) == 4 and not set(train) & set(val)
    assert T.split_validation(files, "0.34", 3, mel_config, 1024)[1] == val  # seeded
    with pytest.raises(UsageError):
        T.split_validation(files, "1.5", 3, mel_config, 1024)
    train, val, notes = T.split_validation(files, str(clips / "clip2.wav"), 3, mel_config, 1024)
    assert [f.path.name for f in val] == ["clip2.wav"] and len(train) == 5 and notes


def test_cosine_schedule_with_warm_up_and_resume(clips, tmp_path):
    """--lr-schedule cosine --warmup-steps: the rates in metrics.jsonl follow the schedule, and
    a run resumed half way continues it (same rates, same losses)."""
    run_dir = tmp_path / "cosine"
    args = [*TINY, "--batch-size", "2", "--max-steps", "20", "--checkpoint-every", "10",
            "--lr", "1e-3", "--lr-schedule", "cosine", "--lr-min", "1e-4",
            "--warmup-steps", "5", "--seed", "3"]
    result = run_cli("train", clips, "-o", run_dir, *args, env=ENV)
    assert result.returncode == 0, result.stderr.decode()
    rates = [r["lr"] for r in metrics(run_dir)]
    assert rates[:5] == pytest.approx([2e-4, 4e-4, 6e-4, 8e-4, 1e-3])
    assert rates[-1] == pytest.approx(1e-4)
    assert all(a > b for a, b in zip(rates[5:], rates[6:]))  # strictly decaying after warm-up
    assert rates[12] == pytest.approx(1e-4 + 0.9e-3 * 0.5 * (1 + np.cos(np.pi * 8 / 15)))

    resumed = tmp_path / "resumed"
    resumed.mkdir()
    for name in ("run.json", "metrics.jsonl", "step_000010.safetensors", "step_000010.state.pt"):
        shutil.copy(run_dir / name, resumed / name)
    result = run_cli("train", "-o", resumed, "--resume", env=ENV)
    assert result.returncode == 0, result.stderr.decode()
    again = metrics(resumed)
    assert [r["lr"] for r in again] == pytest.approx(rates)
    assert [r["loss"] for r in again[10:]] == pytest.approx(
        [r["loss"] for r in metrics(run_dir)[10:]], abs=1e-6)


def test_bad_schedule_options_are_usage_errors(clips, tmp_path):
    for extra, message in ((["--lr-schedule", "step"], "--lr-schedule"),
                           (["--lr-min", "1"], "--lr-min"), (["--warmup-steps", "-1"], "--warmup")):
        r = run_cli("train", clips, "-o", tmp_path / "x", *TINY, *extra, env=ENV)
        assert r.returncode == 2 and message in r.stderr.decode(), r.stderr.decode()


def test_a_resumed_run_takes_its_architecture_from_run_json():
    """run.json records the model actually trained; a resume takes it (and the sample rate)
    unless the flags are given again, and refuses flags that would change it."""
    from waveglow_cli.training.options import merge_resumed
    from waveglow_cli.training.rundir import run_record

    trained = WaveGlowConfig(n_channels=8, n_layers=2, n_flows=4, n_early_every=2,
                             n_mel_channels=16)
    first = T.TrainOptions(data=["a"], run_dir=Path("run"), model=trained, sample_rate=16000,
                           seed=3)
    saved = json.loads(json.dumps(run_record(first, trained, MelConfig(sample_rate=16000,
                                                                        n_mels=16), Shard())))
    assert saved["options"]["n_flows"] == 4 and saved["options"]["sample_rate"] == 16000
    again = merge_resumed(T.TrainOptions(data=[], run_dir=Path("run"), lr=1e-3,
                                         explicit=frozenset({"lr"})), saved)
    assert again.model == trained and again.sample_rate == 16000 and again.lr == 1e-3
    assert again.data == [str(Path("a").resolve())] and again.seed == 3
    same = merge_resumed(T.TrainOptions(data=[], run_dir=Path("run"), model=trained,
                                        explicit=frozenset({"n_flows"})), saved)
    assert same.model == trained
    with pytest.raises(UsageError, match=r"cannot change \(--n-flows\)"):
        merge_resumed(T.TrainOptions(data=[], run_dir=Path("run"),
                                     explicit=frozenset({"n_flows"})), saved)


def test_train_takes_its_shard_and_settings_from_the_caller(clips, tmp_path, monkeypatch,
                                                            one_thread):
    """The library reads no environment: torchrun's variables do not make a call with a
    single-process Shard start a process group."""
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    run_dir = tmp_path / "run"
    last = T.train(_options(clips, run_dir, max_steps=1, checkpoint_every=1),
                   settings=Settings.from_env({}), shard=Shard())
    assert last == run_dir / "step_000001.safetensors" and last.is_file()
    assert json.loads((run_dir / "run.json").read_text())["world_size"] == 1


def test_resume_of_a_folder_without_a_run_says_so(tmp_path):
    """`train -o newdir --resume` (no DATA): "no run to resume in newdir", not "DATA is
    required"; nothing is created.  A run folder that lost its run.json asks for DATA again."""
    fresh = tmp_path / "newdir"
    result = run_cli("train", "-o", fresh, "--resume", env=ENV)
    err = result.stderr.decode()
    assert result.returncode == 2, err
    assert f"no run to resume in {fresh}" in err and "waveglow train DATA -o" in err, err
    assert "DATA is required" not in err and not fresh.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    for name in ("step_000010.safetensors", "step_000010.state.pt"):
        (kept / name).write_bytes(b"")
    with pytest.raises(UsageError, match="has no run.json to take DATA from"):
        T.train(T.TrainOptions(data=[], run_dir=kept, resume=True),
                settings=Settings.from_env({}), shard=Shard())
