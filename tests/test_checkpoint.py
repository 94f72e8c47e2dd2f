"""Every checkpoint format loads to the reference function; bad and hostile files fail cleanly."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import reference_glow as R
import torch
from conftest import TINY, clone_module, save_nvidia_pickle, state_dict_of

from waveglow_cli.checkpoints.reader import read_checkpoint, save_checkpoint
from waveglow_cli.errors import CheckpointError, UnsafePickleError


def reference_output(ref, mel):
    with torch.no_grad():
        return ref.infer(mel, sigma=0.0)


def assert_loads_as(path, ref, alternate=False, sample_rate=22050):
    ckpt = read_checkpoint(path)
    assert ckpt.config.alternate_halves is alternate
    assert ckpt.sample_rate == sample_rate
    model = ckpt.build_model()
    mel = torch.randn(2, ref.upsample.in_channels, 6, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        got = model.infer(mel, sigma=0.0)
    expected = reference_output(ref, mel)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-5
    return ckpt


# ---------------------------------------------------------------------------------------------
# NVIDIA pickles


@pytest.mark.parametrize("layout", R.LAYOUTS)
@pytest.mark.parametrize("old", [False, True], ids=["glow", "glow_old"])
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_nvidia_pickles_every_layout(tmp_path, reference_models, layout, old, legacy):
    ref = reference_models[(layout, old)]
    path = save_nvidia_pickle(ref, tmp_path / "w.pt", legacy=legacy)
    ckpt = assert_loads_as(path, ref, alternate=old)
    assert ("glow_old.WaveGlow" if old else "glow.WaveGlow") in ckpt.source_format
    assert ckpt.config.n_flows == 12 and ckpt.config.n_channels == 8


def test_weight_norm_removed_zip_pickle_with_model_key_only(tmp_path, tiny_reference):
    path = save_nvidia_pickle(tiny_reference, tmp_path / "w.pt", legacy=False,
                              remove_weight_norm=True, extra=False)
    ckpt = assert_loads_as(path, tiny_reference)
    assert ckpt.config.n_early_every == 4 and ckpt.config.n_early_size == 2


def test_pickle_from_old_torch_lacking_padding_mode_and_with_thnn_backend(tmp_path, tiny_reference):
    """torch<=1.0 modules had no padding_mode and pickled a THNN backend object."""
    from torch.nn.backends.thnn import _get_thnn_function_backend

    class Backend:
        def __reduce__(self):
            return (_get_thnn_function_backend, ())

    model = clone_module(tiny_reference)
    for module in model.modules():
        if isinstance(module, torch.nn.Conv1d | torch.nn.ConvTranspose1d):
            del module.padding_mode
        module._backend = Backend()
    path = save_nvidia_pickle(model, tmp_path / "w.pt", legacy=True)
    assert_loads_as(path, tiny_reference)


def test_nvidia_code_is_never_imported(tmp_path, tiny_checkpoint, monkeypatch):
    """A module named glow that would run code on import must not be touched."""
    marker = tmp_path / "imported"
    (tmp_path / "glow.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    read_checkpoint(tiny_checkpoint)
    assert not marker.exists()


# ---------------------------------------------------------------------------------------------
# State dicts


def _with_prefix(sd, prefix):
    return {prefix + k: v for k, v in sd.items()}


def _parametrized(sd):
    out = {}
    for k, v in sd.items():
        if k.endswith(".weight_g"):
            out[k[:-len("weight_g")] + "parametrizations.weight.original0"] = v
        elif k.endswith(".weight_v"):
            out[k[:-len("weight_v")] + "parametrizations.weight.original1"] = v
        else:
            out[k] = v
    return out


@pytest.mark.parametrize("variant", [
    "ddp_state_dict_with_config", "bare_no_weight_norm", "under_model_key", "parametrizations",
    "fp16_amp", "compiled_prefix"])
def test_state_dict_variants(tmp_path, reference_models, variant):
    ref = reference_models[("cond_layers", False)]
    sd = state_dict_of(ref)
    if variant == "ddp_state_dict_with_config":  # DeepLearningExamples' checkpoint dict
        payload = {"epoch": 3, "state_dict": _with_prefix(sd, "module."),
                   "config": {"n_mel_channels": 4, "n_flows": 12, "n_group": 8,
                              "n_early_every": 4, "n_early_size": 2,
                              "WN_config": {"n_layers": 3, "n_channels": 8, "kernel_size": 3}},
                   "cuda_rng_state_all": [torch.zeros(16, dtype=torch.uint8)]}
    elif variant == "bare_no_weight_norm":
        payload = state_dict_of(ref, remove_weight_norm=True)
    elif variant == "under_model_key":
        payload = {"model": sd, "iteration": 5}
    elif variant == "parametrizations":
        payload = _parametrized(sd)
    elif variant == "fp16_amp":
        payload = {"state_dict": {k: v.half() for k, v in state_dict_of(ref, True).items()}}
    else:
        payload = _with_prefix(sd, "_orig_mod.")
    path = tmp_path / "sd.pt"
    torch.save(payload, path)
    if variant == "fp16_amp":  # weights were rounded to fp16: compare with that model
        ref = clone_module(ref)
        R.WaveGlow.remove_weightnorm(ref)
        with torch.no_grad():
            for p in ref.parameters():
                p.copy_(p.half().float())
        for conv in ref.convinv:  # the reference caches its inverse: drop the stale one
            conv.__dict__.pop("W_inverse", None)
    assert_loads_as(path, ref)


def test_state_dict_from_glow_old_needs_the_hint(tmp_path, reference_models):
    """A bare state dict cannot say glow_old; a config hint can."""
    ref = reference_models[("cond_layers", True)]
    path = tmp_path / "sd.pt"
    torch.save({"state_dict": state_dict_of(ref), "config": {"alternate_halves": True}}, path)
    assert_loads_as(path, ref, alternate=True)


def test_safetensors_round_trip_keeps_semantics_and_metadata(tmp_path, reference_models):
    ref = reference_models[("res_skip_separate", True)]
    source = save_nvidia_pickle(ref, tmp_path / "w.pt")
    out = save_checkpoint(tmp_path / "w.safetensors", read_checkpoint(source),
                          sample_rate=16000, mel={"n_mels": 4, "fmax": 7600.0})
    ckpt = assert_loads_as(out, ref, alternate=True, sample_rate=16000)
    assert ckpt.mel == {"n_mels": 4, "fmax": 7600.0}
    assert ckpt.source_format == "waveglow-cli safetensors"
    assert not list(tmp_path.glob("*.tmp"))


def test_architecture_is_read_from_tensors(tmp_path):
    ref = R.build(n_mel_channels=5, n_flows=6, n_group=6, n_early_every=2, n_early_size=2,
                  n_layers=2, n_channels=6, kernel_size=5, scale=0.08)
    path = save_nvidia_pickle(ref, tmp_path / "w.pt")
    c = assert_loads_as(path, ref).config
    assert (c.n_mel_channels, c.n_flows, c.n_group, c.n_early_every, c.n_early_size,
            c.n_layers, c.n_channels, c.kernel_size) == (5, 6, 6, 2, 2, 2, 6, 5)


# ---------------------------------------------------------------------------------------------
# Bad files


def _one_line(error: Exception, path: Path):
    text = str(error)
    assert "\n" not in text and str(path) in text
    return text


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_truncated_checkpoint(tmp_path, tiny_reference, legacy):
    full = save_nvidia_pickle(tiny_reference, tmp_path / "full.pt", legacy=legacy).read_bytes()
    for cut in (len(full) // 2, len(full) - 10, 40):
        path = tmp_path / f"cut{cut}.pt"
        path.write_bytes(full[:cut])
        with pytest.raises(CheckpointError) as info:
            read_checkpoint(path)
        _one_line(info.value, path)


@pytest.mark.parametrize("content,reason", [
    (b"", "empty"),
    (b"<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title>", "HTML page"),
    (b"\n  <html><body>Too many users have viewed or downloaded this file", "HTML page"),
    (os.urandom(4096), "not a WaveGlow checkpoint"),
    (b"PK\x03\x04" + os.urandom(200), "corrupt"),
], ids=["empty", "html-quota", "html-too-many", "random", "zip-garbage"])
def test_not_a_checkpoint(tmp_path, content, reason):
    path = tmp_path / "waveglow_256channels_universal_v5.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=reason) as info:
        read_checkpoint(path)
    _one_line(info.value, path)


def test_other_torch_files_are_named_as_such(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(3), "step": 1}, path)
    with pytest.raises(CheckpointError, match="not a WaveGlow checkpoint"):
        read_checkpoint(path)
    sd = state_dict_of(R.build(**TINY))
    del sd["WN.3.end.bias"]
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match="missing tensors: WN.3.end.bias"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match="directory"):
        read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="no such file"):
        read_checkpoint(tmp_path / "missing.pt")


# ---------------------------------------------------------------------------------------------
# Hostile pickles


class _Hostile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("how", ["legacy", "zip", "plain_pickle", "in_optimizer_state"])
def test_hostile_pickle_is_refused_and_never_runs(tmp_path, tiny_reference, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    evil = _Hostile(marker)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if how == "legacy":
            torch.save({"model": evil}, path, _use_new_zipfile_serialization=False)
        elif how == "zip":
            torch.save({"model": evil}, path)
        elif how == "plain_pickle":
            path.write_bytes(pickle.dumps({"model": evil}, protocol=2))
        else:
            good = save_nvidia_pickle(tiny_reference, tmp_path / "good.pt", legacy=True)
            with R.nvidia_modules():
                payload = torch.load(good, weights_only=False)
                payload["optimizer"] = {"state": {0: evil}}
                torch.save(payload, path, _use_new_zipfile_serialization=False)
    assert not marker.exists()
    with pytest.raises(UnsafePickleError) as info:
        read_checkpoint(path)
    assert not marker.exists()
    assert "system" in info.value.global_name
    assert info.value.global_name in _one_line(info.value, path)


def test_hostile_global_disguised_as_glow_attribute(tmp_path):
    """Only the listed glow class names are stand-ins; glow.anything_else is refused."""
    path = tmp_path / "evil.pt"
    # GLOBAL 'glow os_system' then STOP: a pickle naming an unlisted attribute of glow
    path.write_bytes(b"\x80\x02cglow\nos_system\nq\x00.")
    with pytest.raises(UnsafePickleError, match="glow.os_system"):
        read_checkpoint(path)
