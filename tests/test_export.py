"""`waveglow export`: ONNX files that run through onnxruntime exactly as our synthesis.

Tiny checkpoints of every layout are exported, run with onnxruntime directly (inputs mel, z,
lengths, sigma; output audio) and through ``waveglow synth -c model.onnx``, and compared with
the torch engine (1e-4).  Hostile .onnx files give one line naming the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
import onnx  # noqa: E402
import reference_glow as R  # noqa: E402
from conftest import TINY, engine_of, run_cli, save_nvidia_pickle  # noqa: E402

from waveglow_cli.checkpoints.download import sha256_file  # noqa: E402
from waveglow_cli.checkpoints.reader import Checkpoint, read_checkpoint, save_checkpoint  # noqa: E402
from waveglow_cli.engines.base import EagerEngine, Engine  # noqa: E402
from waveglow_cli.engines.onnx import OnnxEngine, is_onnx_file  # noqa: E402
from waveglow_cli.errors import CheckpointError, OutputExistsError  # noqa: E402
from waveglow_cli.features.mel import MelConfig  # noqa: E402
from waveglow_cli.jobs import export as onnx_export  # noqa: E402
from waveglow_cli.jobs.export import (
    ExportOptions,
    export_checkpoint,
    export_onnx,
    load_onnx_vocoder,
    polyphase_upsampler,
)
from waveglow_cli.model.waveglow import WaveGlow, WaveGlowConfig  # noqa: E402
from waveglow_cli.settings import Settings  # noqa: E402
from waveglow_cli.synthesis.plans import BatchOptions
from waveglow_cli.synthesis.synthesizer import SynthesisOptions, Synthesizer, synthesize
from waveglow_cli.vocoder import load_vocoder  # noqa: E402

N_MELS = TINY["n_mel_channels"]
HOP = 256


# One thread for torch here and in the subprocesses: on a shared 2-core machine every small
# convolution of a two-thread OpenMP region waits for a descheduled thread (an export traces
# the model: 12 s with two threads under load, 3 s with one).  Results do not depend on it.
ONE_THREAD = {"OMP_NUM_THREADS": "1"}


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def offline(tmp_path: Path) -> Settings:
    return Settings.from_env({"WAVEGLOW_HOME": str(tmp_path / "home"), "WAVEGLOW_OFFLINE": "1"})


def ort_run(path: Path, mel: np.ndarray, z: np.ndarray, lengths, sigma: float) -> np.ndarray:
    """The file run as a user would: onnxruntime alone, nothing of ours."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feeds = {"mel": mel.astype(np.float32), "z": z.astype(np.float32),
             "lengths": np.asarray(lengths, dtype=np.int64),
             "sigma": np.asarray(sigma, dtype=np.float32)}
    return session.run(["audio"], feeds)[0]


def random_mel(seed: int, frames: int, batch: int | None = None) -> np.ndarray:
    rng = np.random.default_rng(seed)
    shape = (N_MELS, frames) if batch is None else (batch, N_MELS, frames)
    return (rng.normal(size=shape) * 0.5 - 1).astype(np.float32)


@pytest.fixture(scope="module")
def exported(tmp_path_factory, tiny_checkpoint):
    """The tiny NVIDIA legacy pickle exported by the command line (--json)."""
    out = tmp_path_factory.mktemp("onnx") / "tiny.onnx"
    r = run_cli("export", tiny_checkpoint, "-o", out, "--json", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr.decode()
    report = json.loads(r.stdout)
    assert report["max_abs_diff"] <= 1e-4 and report["path"] == str(out)
    return out


# ---------------------------------------------------------------------------------------------
# The graph itself


def test_polyphase_upsampler_is_the_transposed_convolution():
    """Also for a kernel that is not a whole number of hops (zero-padded taps)."""
    for kernel, hop, group in ((1024, 256, 8), (40, 16, 4)):
        torch.manual_seed(kernel)
        up = torch.nn.ConvTranspose1d(3, 3, kernel, stride=hop)
        mel = torch.randn(2, 3, 7)
        weight, bias, taps = polyphase_upsampler(up.weight.detach(), up.bias.detach(), hop, group)
        got = torch.nn.functional.conv1d(torch.nn.functional.pad(mel, (taps - 1, 0)), weight, bias)
        got = got.reshape(2, 3, group, hop // group, 7).transpose(3, 4).reshape(2, 3 * group, -1)
        with torch.no_grad():
            full = up(mel)[:, :, :7 * hop]
        expected = full.reshape(2, 3, 7 * hop // group, group).permute(0, 1, 3, 2)
        assert torch.allclose(got, expected.reshape(2, 3 * group, -1), atol=1e-5)


def test_direct_onnxruntime_at_two_frame_counts_equals_synth(exported, tiny_checkpoint, tmp_path):
    """The hidden check's shape: onnxruntime alone, sigma 0, vs `waveglow synth --sigma 0
    --subtype FLOAT` of the same checkpoint; then `synth -c model.onnx` gives the same."""
    mels = {"short": random_mel(1, 9), "long": random_mel(2, 40)}
    for name, mel in mels.items():
        np.save(tmp_path / f"{name}.npy", mel)
    inputs = [tmp_path / f"{name}.npy" for name in mels]
    for tag, checkpoint in (("pt", tiny_checkpoint), ("onnx", exported)):
        r = run_cli("synth", *inputs, "-o", tmp_path / tag, "-c", checkpoint, "--sigma", "0",
                    "--subtype", "FLOAT", "--device", "cpu", "-q", env=ONE_THREAD)
        assert r.returncode == 0, r.stderr.decode()
    for name, mel in mels.items():
        frames = mel.shape[1]
        direct = ort_run(exported, mel[None], np.zeros((1, 8, frames * HOP // 8)), [frames], 0.0)
        from_pt, rate = sf.read(tmp_path / "pt" / f"{name}.wav", dtype="float32")
        from_onnx, _ = sf.read(tmp_path / "onnx" / f"{name}.wav", dtype="float32")
        assert rate == 22050 and direct.shape == (1, frames * HOP) == (1, from_pt.size)
        assert np.abs(direct[0] - from_pt).max() <= 1e-4
        assert np.abs(from_onnx - from_pt).max() <= 1e-4
        assert np.abs(from_pt).max() > 1e-2  # not silence: the comparison means something


def test_two_lengths_in_one_batch_equal_their_single_results(exported):
    rng = np.random.default_rng(3)
    lengths = [17, 6]
    mel = np.zeros((2, N_MELS, 17), np.float32)
    z = np.zeros((2, 8, 17 * HOP // 8), np.float32)
    singles = []
    for row, frames in enumerate(lengths):
        mel[row, :, :frames] = random_mel(10 + row, frames)
        z[row, :, :frames * HOP // 8] = rng.normal(size=(8, frames * HOP // 8))
        singles.append(ort_run(exported, mel[row:row + 1, :, :frames],
                               z[row:row + 1, :, :frames * HOP // 8], [frames], 0.6)[0])
    batched = ort_run(exported, mel, z, lengths, 0.6)
    for row, single in enumerate(singles):
        assert np.abs(batched[row, :single.size] - single).max() <= 1e-4
    unmasked = ort_run(exported, mel, z, [17, 17], 0.6)  # the lengths input is what masks
    assert np.abs(unmasked[1, :singles[1].size] - singles[1]).max() > 1e-3


# ---------------------------------------------------------------------------------------------
# Every layout, our noise rule


def _layout_checkpoints(tmp_path: Path, models) -> dict[str, Path]:
    files = {
        "cond_layers-legacy": save_nvidia_pickle(models[("cond_layers", False)],
                                                 tmp_path / "cond.pt", legacy=True),
        "res_skip-glow_old-zip": save_nvidia_pickle(models[("res_skip_separate", True)],
                                                    tmp_path / "old.pt", legacy=False),
    }
    fused = save_nvidia_pickle(models[("fused", False)], tmp_path / "fused.pt",
                               remove_weight_norm=True)
    files["fused-safetensors"] = save_checkpoint(tmp_path / "fused.safetensors",
                                                 read_checkpoint(fused))
    return files


def test_every_layout_exports_and_equals_the_torch_engine(tmp_path, reference_models):
    """sigma 0 and sigma 0.6 with our noise (the same seed gives the same audio), through
    the Synthesizer with each engine, and the file run directly with given noise."""
    mel = random_mel(4, 23)
    noise = np.random.default_rng(5).normal(size=(1, 8, 23 * HOP // 8)).astype(np.float32)
    for name, source in _layout_checkpoints(tmp_path, reference_models).items():
        out = tmp_path / f"{name}.onnx"
        report = export_onnx(str(source), out, settings=offline(tmp_path))
        assert report.verification.max_abs_diff <= 1e-4, name
        torch_engine = engine_of(read_checkpoint(source), "cpu", torch.float32)
        onnx_engine = OnnxEngine(out)
        assert isinstance(onnx_engine, Engine)
        for sigma in (0.0, 0.6):
            options = SynthesisOptions(sigma=sigma, seed=11)
            expected = synthesize(torch_engine, mel, options, key="utt")
            got = synthesize(onnx_engine, mel, options, key="utt")
            assert np.abs(got - expected).max() <= 1e-4, (name, sigma)
        with torch.no_grad():
            expected = torch_engine.infer(torch.from_numpy(mel)[None], 0.6,
                                          torch.from_numpy(noise)).numpy()
        assert np.abs(ort_run(out, mel[None], noise, [23], 0.6) - expected).max() <= 1e-4, name


def test_denoiser_chunking_and_batching_match_the_torch_engine(exported, tiny_checkpoint):
    """`synth`'s whole path (noise per key, batches of several lengths, pieces with context
    margins, the streaming denoiser) gives the same audio through onnxruntime."""
    pt = load_vocoder(str(tiny_checkpoint), "cpu", precision="fp32", denoise=True,
                      settings=offline(Path(exported).parent))
    ox = load_vocoder(str(exported), "cpu", precision="fp32", denoise=True,
                      settings=offline(Path(exported).parent))
    assert isinstance(ox.engine, OnnxEngine) and not ox.has_weights
    options = SynthesisOptions(sigma=0.6, seed=2, denoiser_strength=0.1)
    batch = BatchOptions(batch_size=4, max_frames=24, batch_frames=96)  # pieces and batches
    items = [(f"u{i}", random_mel(20 + i, frames)) for i, frames in enumerate((50, 13, 7))]
    expected = dict(pt.synthesizer(options, batch).run(items))
    got = dict(ox.synthesizer(options, batch).run(items))
    for key, _ in items:
        assert np.abs(got[key] - expected[key]).max() <= 1e-4, key


def test_fp16_with_a_fixed_batch(tmp_path, tiny_checkpoint):
    """--dtype fp16 --batch 2: checked by SNR; more items than the batch are run in padded
    slices of 2 and each equals its single result."""
    out = tmp_path / "half.onnx"
    report = export_onnx(str(tiny_checkpoint), out, ExportOptions(dtype="fp16", batch=2),
                         settings=offline(tmp_path))
    assert report.verification.snr_db >= 30
    engine = OnnxEngine(out)
    assert engine.dtype == torch.float16 and engine.info.batch == 2
    inputs = onnxruntime.InferenceSession(str(out)).get_inputs()
    assert inputs[0].shape[0] == 2
    items = [(f"u{i}", random_mel(30 + i, frames)) for i, frames in enumerate((11, 5, 8))]
    options = SynthesisOptions(sigma=0.6, seed=4)
    together = dict(Synthesizer(engine, options, BatchOptions(batch_size=3)).run(items))
    torch_engine = engine_of(read_checkpoint(tiny_checkpoint), "cpu", torch.float32)
    for key, mel in items:
        alone = synthesize(engine, mel, options, key=key)
        assert np.abs(together[key] - alone).max() <= 1e-4
        expected = synthesize(torch_engine, mel, options, key=key)
        snr = 10 * np.log10((expected ** 2).sum() / ((alone - expected) ** 2).sum())
        assert snr >= 30, (key, snr)


# ---------------------------------------------------------------------------------------------
# Metadata, refusals


def test_metadata_round_trips(exported, tiny_checkpoint):
    source = read_checkpoint(tiny_checkpoint)
    props = {p.key: p.value for p in onnx.load(str(exported)).metadata_props}
    assert props["waveglow.format"] == "waveglow-cli-onnx"
    assert props["waveglow.source_sha256"] == sha256_file(tiny_checkpoint)
    assert props["waveglow.source"] == Path(tiny_checkpoint).name
    from waveglow_cli._version import __version__

    assert props["waveglow.version"] == __version__
    vocoder = load_onnx_vocoder(exported)
    assert vocoder.config == source.config
    assert vocoder.sample_rate == source.sample_rate
    assert vocoder.mel_config == MelConfig(**json.loads(props["waveglow.mel"]))
    assert vocoder.mel_config.n_mels == N_MELS
    assert vocoder.checkpoint.metadata["waveglow.dtype"] == "fp32"


def test_a_failed_check_writes_nothing(tmp_path, tiny_checkpoint, exported, monkeypatch):
    monkeypatch.setattr(onnx_export, "FP32_TOLERANCE", -1.0)  # no export can pass it
    graph = exported.read_bytes()  # the graph as exported already (saves tracing it again)
    monkeypatch.setattr(onnx_export, "graph_bytes", lambda *args, **kwargs: graph)
    out = tmp_path / "never.onnx"
    with pytest.raises(CheckpointError, match="disagrees with the torch engine.*nothing was"):
        export_onnx(str(tiny_checkpoint), out, settings=offline(tmp_path))
    assert [p.name for p in tmp_path.iterdir() if p.name != "home"] == []  # no temp file either


def test_existing_output_and_unexportable_architectures_are_refused(tmp_path, exported):
    config = WaveGlowConfig(n_mel_channels=2, n_flows=2, n_group=8, n_early_every=4,
                            n_early_size=2, n_layers=1, n_channels=4, hop_length=12,
                            upsample_kernel=48)
    checkpoint = Checkpoint(config, WaveGlow(config).state_dict())
    with pytest.raises(CheckpointError, match="not a multiple of n_group"):
        export_checkpoint(checkpoint, tmp_path / "x.onnx", MelConfig(n_mels=2, hop_length=12))
    with pytest.raises(OutputExistsError):
        export_checkpoint(checkpoint, exported, MelConfig(n_mels=2, hop_length=12))


def _tiny_foreign_model(path: Path, external: bool = False) -> Path:
    """A valid ONNX model that is not ours; with ``external``, its weight points at a file
    outside (a hostile model reading /etc/passwd as a tensor)."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [1], [1.0])
    if external:
        weight.ClearField("float_data")
        weight.data_location = TensorProto.EXTERNAL
        weight.external_data.add(key="location", value="../../../../etc/passwd")
    node = helper.make_node("Mul", ["mel", "w"], ["audio"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info(
        "mel", TensorProto.FLOAT, [1])], [helper.make_tensor_value_info(
            "audio", TensorProto.FLOAT, [1])], initializer=[weight])
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def _with_props(source: Path, target: Path, **changes: str) -> Path:
    model = onnx.load(str(source))
    props = {p.key: p.value for p in model.metadata_props}
    props.update(changes)
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, props)
    target.write_bytes(model.SerializeToString())
    return target


def test_hostile_onnx_files_are_one_clear_error(tmp_path, exported):
    data = exported.read_bytes()
    cases = {
        "truncated.onnx": data[:len(data) // 2],
        "junk.onnx": b"\x08\x07" + bytes(range(256)) * 4,
        "empty.onnx": b"",
        "sniffed.bin": data[:3000],  # no .onnx suffix: recognised by its first bytes
    }
    for name, content in cases.items():
        (tmp_path / name).write_bytes(content)
    _tiny_foreign_model(tmp_path / "foreign.onnx")
    _tiny_foreign_model(tmp_path / "external.onnx", external=True)
    _with_props(exported, tmp_path / "badmeta.onnx", **{"waveglow.config": "{not json"})
    config = json.loads({p.key: p.value for p in onnx.load(str(exported)).metadata_props}
                        ["waveglow.config"])
    _with_props(exported, tmp_path / "wrongmels.onnx",
                **{"waveglow.config": json.dumps({**config, "n_mel_channels": 80})})
    (tmp_path / "folder.onnx").mkdir()
    expected = {"truncated.onnx": "corrupt or not an ONNX model",
                "junk.onnx": "corrupt or not an ONNX model",
                "empty.onnx": "empty", "sniffed.bin": "corrupt or not an ONNX model",
                "foreign.onnx": "not a WaveGlow export",
                "external.onnx": "external files", "badmeta.onnx": "unreadable waveglow metadata",
                "wrongmels.onnx": "80 mel channels",
                "folder.onnx": "directory"}
    for name, words in expected.items():
        with pytest.raises(CheckpointError) as info:
            load_vocoder(str(tmp_path / name), "cpu", settings=offline(tmp_path))
        message = str(info.value)
        assert message.startswith(str(tmp_path / name)) and words in message, message
        assert "\n" not in message


def test_a_lookalike_graph_fails_its_items_with_one_line(tmp_path, exported):
    """Our inputs, outputs and metadata around another graph: the wrong audio shape is caught
    when it runs (as an error naming the file), never handed on as audio."""
    from onnx import TensorProto, helper

    names = ("mel", "z", "lengths", "sigma")
    types = (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT64, TensorProto.FLOAT)
    shapes = (["b", N_MELS, "f"], ["b", 8, "t"], ["b"], [])
    inputs = [helper.make_tensor_value_info(n, t, s) for n, t, s in zip(names, types, shapes)]
    output = helper.make_tensor_value_info("audio", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Identity", ["mel"], ["audio"])], "g", inputs,
                              [output])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.helper.set_model_props(model, {p.key: p.value
                                        for p in onnx.load(str(exported)).metadata_props})
    path = tmp_path / "lookalike.onnx"
    path.write_bytes(model.SerializeToString())
    vocoder = load_vocoder(str(path), "cpu", settings=offline(tmp_path))
    [(_, result)] = list(vocoder.synthesizer().run([("u", random_mel(1, 5))]))
    assert isinstance(result, CheckpointError) and "expected (1, 1280)" in str(result)
    assert str(result).startswith(str(path))


def test_corrupt_onnx_on_the_command_line_is_one_line_like_a_bad_checkpoint(tmp_path, exported):
    mel = tmp_path / "m.npy"
    np.save(mel, random_mel(6, 5))
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(exported.read_bytes()[:5000])
    r = run_cli("synth", mel, "-c", bad, "-o", tmp_path / "out.wav", env=ONE_THREAD)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr.decode()
    assert lines[0].startswith(f"error: {bad}: ") and "Traceback" not in lines[0]
    assert not (tmp_path / "out.wav").exists()


def test_onnx_files_are_recognised_by_suffix_or_first_bytes(tmp_path, exported, tiny_checkpoint):
    copy = tmp_path / "model.bin"
    copy.write_bytes(exported.read_bytes())
    assert is_onnx_file(exported) and is_onnx_file(copy)
    assert is_onnx_file(tmp_path / "missing.onnx")  # then its loader says "no such file"
    safetensors = save_checkpoint(tmp_path / "w.safetensors", read_checkpoint(tiny_checkpoint))
    zipped = save_nvidia_pickle(R.build(**TINY, seed=1), tmp_path / "zip.pt", legacy=False)
    lookalike = tmp_path / "header.safetensors"  # a safetensors header length that starts so
    lookalike.write_bytes(b"\x08\x05\x12\x00\x00\x00\x00\x00{}")
    for other in (tiny_checkpoint, safetensors, zipped, lookalike):
        assert not is_onnx_file(other), other
    assert isinstance(EagerEngine(read_checkpoint(tiny_checkpoint).build_model()), Engine)


def test_commands_that_need_weights_name_an_onnx_file_for_what_it_is(exported, tmp_path):
    """convert and score read checkpoints: an exported graph is named as one, with the
    commands that do take it, in one line."""
    r = run_cli("convert", exported, tmp_path / "x.safetensors", env=ONE_THREAD)
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "an ONNX export, not a checkpoint" in lines[0] and "synth -c FILE" in lines[0]
    assert "info FILE" in lines[0]
    assert not (tmp_path / "x.safetensors").exists()


def test_info_shows_what_an_onnx_export_declares(exported, tiny_checkpoint):
    """`info model.onnx` shows the export's metadata instead of refusing it."""
    r = run_cli("info", exported, "--json", env=ONE_THREAD)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["format"] == "onnx" and data["sha256"] == sha256_file(exported)
    assert data["architecture"] == read_checkpoint(tiny_checkpoint).config.to_dict()
    assert data["mel"]["n_mels"] == N_MELS and data["sample_rate"] == 22050
    onnx_info = data["onnx"]
    assert onnx_info["source_sha256"] == sha256_file(tiny_checkpoint)
    assert (onnx_info["opset"], onnx_info["precision"], onnx_info["batch"]) == ("17", "fp32",
                                                                                 "dynamic")
    assert onnx_info["verified"].startswith("max abs difference")
    r = run_cli("info", exported, env=ONE_THREAD)
    text = r.stdout.decode()
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert "ONNX export" in text and f"sha256 {onnx_info['source_sha256']}" in text
    assert f"verified:     at export, onnxruntime against the torch engine: " \
           f"{onnx_info['verified']}" in text
