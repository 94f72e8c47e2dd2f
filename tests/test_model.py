"""The model equals an independent reference, inverts exactly, and has the right log-det."""

from __future__ import annotations

import pytest
import reference_glow as R
import torch
from conftest import engine_of

from waveglow_cli.checkpoints.reader import infer_config, normalize_state_dict
from waveglow_cli.model.waveglow import WaveGlow, WaveGlowConfig, waveglow_loss


def ours_from_reference(ref, old: bool) -> WaveGlow:
    sd = normalize_state_dict(ref.state_dict())
    config = infer_config(sd, {"alternate_halves": old})
    model = WaveGlow(config)
    model.load_state_dict(sd)
    return model.eval()


def reference_draws(z: torch.Tensor, config: WaveGlowConfig):
    """Feed the reference's noise draws from our z layout: final channels first, then the
    early outputs from the last split back to the first."""
    n_early = sum(config.is_early_flow(k) for k in range(config.n_flows))
    chunks = [z[:, n_early * config.n_early_size:]]
    for j in reversed(range(n_early)):
        chunks.append(z[:, j * config.n_early_size:(j + 1) * config.n_early_size])
    it = iter(chunks)
    return lambda shape: next(it)


@pytest.mark.parametrize("layout", R.LAYOUTS)
@pytest.mark.parametrize("old", [False, True], ids=["glow", "glow_old"])
def test_infer_matches_reference(reference_models, layout, old):
    ref = reference_models[(layout, old)]
    ours = ours_from_reference(ref, old)
    assert ours.config.alternate_halves is old
    torch.manual_seed(1)
    mel = torch.randn(2, 4, 9)
    z = torch.randn(ours.noise_shape(2, 9))
    with torch.no_grad():
        for sigma in (0.0, 0.6):
            expected = ref.infer(mel, sigma=sigma, draw=reference_draws(z, ours.config))
            got = ours.infer(mel, sigma=sigma, z=z)
            assert got.shape == (2, 9 * 256)
            assert torch.allclose(got, expected, atol=1e-5, rtol=1e-4), (got - expected).abs().max()


@pytest.mark.parametrize("layout", R.LAYOUTS)
@pytest.mark.parametrize("old", [False, True], ids=["glow", "glow_old"])
def test_the_default_cpu_engine_matches_the_reference(reference_models, layout, old):
    """What a float32 checkpoint opened on the CPU runs by default (the packed fast path: other
    layout, other summation order) is NVIDIA's function to float rounding, at sigma 0 and
    sampling, batched with masks or not."""
    from waveglow_cli.checkpoints.reader import Checkpoint
    from waveglow_cli.engines.packed import FastWaveGlow

    ref = reference_models[(layout, old)]
    ours = ours_from_reference(ref, old)
    engine = engine_of(Checkpoint(ours.config, ours.state_dict()), "cpu", torch.float32)
    assert isinstance(engine, FastWaveGlow) and engine.dtype == torch.float32
    torch.manual_seed(2)
    mel = torch.randn(2, 4, 11)
    z = torch.randn(ours.noise_shape(2, 11))
    with torch.no_grad():
        for sigma in (0.0, 0.6):
            expected = ref.infer(mel, sigma=sigma, draw=reference_draws(z, ours.config))
            got = engine.infer(mel, sigma, z)
            assert float((got - expected).abs().max()) <= 1e-4 * max(1.0, float(expected.abs().max()))
            alone = engine.infer(mel[1:, :, :7], sigma, z[1:, :, :7 * 32])[0]
            batched = engine.infer(mel[:, :, :], sigma, z, torch.tensor([11, 7]))[1, :7 * 256]
            assert float((alone - batched).abs().max()) <= 1e-5 * max(1.0, float(alone.abs().max()))


def test_glow_old_semantics_differ(reference_models):
    """Same tensors, other class: the odd-flow swap must change the output (or the test above
    could pass with the flag ignored)."""
    ref = reference_models[("cond_layers", True)]
    old = ours_from_reference(ref, True)
    new = WaveGlow(WaveGlowConfig(**{**old.config.to_dict(), "alternate_halves": False}))
    new.load_state_dict(old.state_dict())
    new.eval()
    mel = torch.randn(1, 4, 6)
    with torch.no_grad():
        assert (old.infer(mel, 0.0) - new.infer(mel, 0.0)).abs().max() > 1e-3


@pytest.mark.parametrize("old", [False, True], ids=["glow", "glow_old"])
def test_forward_matches_reference_and_inverts(reference_models, old):
    ref = reference_models[("fused", old)]
    ours = ours_from_reference(ref, old)
    torch.manual_seed(2)
    mel = torch.randn(2, 4, 7)
    audio = 0.3 * torch.randn(2, 7 * 256)
    with torch.no_grad():
        z, log_s, log_det = ours(mel, audio)
        recovered = ours.infer(mel, sigma=1.0, z=z)
        if not old:  # glow_old's reference forward is disabled (returns None)
            z_ref, log_s_ref, log_det_ref = ref((mel, audio))
            assert torch.allclose(z, z_ref, atol=1e-5)
            assert torch.allclose(sum(t.sum() for t in log_s), sum(t.sum() for t in log_s_ref),
                                  rtol=1e-5)
            assert torch.allclose(sum(log_det), sum(log_det_ref), rtol=1e-5, atol=1e-4)
    assert (recovered - audio).abs().max() < 1e-4


def test_log_determinant_equals_brute_force_jacobian():
    torch.manual_seed(3)
    config = WaveGlowConfig(n_mel_channels=3, n_flows=4, n_group=4, n_early_every=2,
                            n_early_size=2, n_layers=2, n_channels=4, kernel_size=3,
                            upsample_kernel=32, hop_length=8)
    model = WaveGlow(config).double()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("convinv"):
                p.normal_(0, 0.3)
    mel = torch.randn(1, 3, 5, dtype=torch.float64)
    audio = torch.randn(1, 40, dtype=torch.float64)

    def to_z(x):
        return model(mel, x.unsqueeze(0))[0].reshape(-1)

    jacobian = torch.autograd.functional.jacobian(to_z, audio[0])
    brute = torch.linalg.slogdet(jacobian).logabsdet
    with torch.no_grad():
        _, log_s, log_det = model(mel, audio)
    analytic = sum(t.sum() for t in log_s) + sum(log_det)
    assert abs(brute.item() - analytic.item()) < 1e-8
    assert abs(analytic.item()) > 0.1  # a non-trivial determinant, or the check means little


def test_loss_is_nvidias_objective():
    torch.manual_seed(4)
    z = torch.randn(2, 8, 10)
    log_s = [torch.randn(2, 4, 10), torch.randn(2, 3, 10)]
    log_det = [torch.tensor(1.5), torch.tensor(-0.25)]
    sigma = 0.8
    expected = (z.pow(2).sum() / (2 * sigma**2) - sum(t.sum() for t in log_s) - 1.25) / z.numel()
    assert torch.allclose(waveglow_loss(z, log_s, log_det, sigma), expected)


def test_masked_batch_equals_single_items(reference_models):
    """Padding must not leak through the dilated convolutions: batched == alone."""
    ours = ours_from_reference(reference_models[("fused", False)], False)
    torch.manual_seed(5)
    mels = [torch.randn(1, 4, n) for n in (5, 9, 3)]
    zs = [torch.randn(ours.noise_shape(1, m.size(2))) for m in mels]
    frames = max(m.size(2) for m in mels)
    batch_mel = torch.zeros(3, 4, frames)
    batch_z = torch.zeros(ours.noise_shape(3, frames))
    for i, (m, z) in enumerate(zip(mels, zs)):
        batch_mel[i, :, :m.size(2)] = m[0]
        batch_z[i, :, :z.size(2)] = z[0]
    lengths = torch.tensor([m.size(2) for m in mels])
    with torch.no_grad():
        batched = ours.infer(batch_mel, 0.7, z=batch_z, lengths=lengths)
        unmasked = ours.infer(batch_mel, 0.7, z=batch_z)
        for i, (m, z) in enumerate(zip(mels, zs)):
            alone = ours.infer(m, 0.7, z=z)[0]
            n = alone.numel()
            # float rounding only (batched GEMMs sum in another order): relative to the scale
            assert (batched[i, :n] - alone).abs().max() <= 1e-5 * alone.abs().max(), i
        # without the mask the shorter items differ: the test above is not vacuous
        n0 = 3 * 256
        alone = ours.infer(mels[2], 0.7, z=zs[2])[0]
        assert (unmasked[2, :n0] - alone).abs().max() > 1e-2 * alone.abs().max()


def test_config_validation_names_values():
    with pytest.raises(ValueError, match="n_group=7"):
        WaveGlowConfig(n_group=7)
    with pytest.raises(ValueError, match="kernel_size=4"):
        WaveGlowConfig(kernel_size=4)


def test_receptive_field_of_published_architecture():
    # 8 layers, kernel 3: 1+2+...+128 = 255 grouped steps each way (2,040 samples)
    assert WaveGlowConfig().receptive_field_steps() == 255


TINY_CONFIG = WaveGlowConfig(n_mel_channels=4, n_flows=4, n_channels=8, n_layers=2)


def test_architecture_facts_on_the_config():
    """What synthesis plans with comes from the config alone (any engine has one)."""
    c = WaveGlowConfig()
    assert c.receptive_field_samples() == 12 * 255 * 8 + 1024
    assert c.context_frames() == 100
    assert c.noise_shape(3, 10) == (3, 8, 320) == WaveGlow(TINY_CONFIG).noise_shape(3, 10)
    assert c.n_early_outputs() == 2


@pytest.mark.parametrize("alternate", [False, True])
def test_halves_split_and_join_on_dimension_1_in_both_layouts(alternate):
    """(B, C, T) in the model and (rows, C) in the fast path: the same cut, and join undoes it."""
    config = WaveGlowConfig(alternate_halves=alternate)
    x = torch.arange(2 * 6 * 5.0).reshape(2, 6, 5)
    rows = x[0].t()
    for k in range(3):
        a, b = config.split_halves(x, k)
        ra, rb = config.split_halves(rows, k)
        assert torch.equal(a[0].t(), ra) and torch.equal(b[0].t(), rb)
        first = slice(3, 6) if alternate and k % 2 else slice(0, 3)
        assert torch.equal(a, x[:, first])
        assert torch.equal(config.join_halves(a, b, k), x)
        assert torch.equal(config.join_halves(ra, rb, k), rows)
