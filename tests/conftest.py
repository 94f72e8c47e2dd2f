"""Tiny checkpoints in every format we load, built in the tests (no real weights, no network)."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

# One compute thread per test process, and for the commands the tests start: the suite runs
# one process per core (pytest -n auto), so more threads only wait on each other (two OpenMP
# threads on a busy 2-core machine made small models 2-4x slower).  Set before torch starts.
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# torch.compile's caches (inductor's, Triton's) in a folder of this test process, removed when
# it ends, never $TMPDIR/torchinductor_$USER or ~/.triton (the commands the tests start inherit
# it; the library points both at its own cache while it compiles).  Set before torch starts.
import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

_INDUCTOR_CACHE = tempfile.mkdtemp(prefix="waveglow-tests-inductor-")
os.environ["TORCHINDUCTOR_CACHE_DIR"] = _INDUCTOR_CACHE
os.environ["TRITON_CACHE_DIR"] = os.path.join(_INDUCTOR_CACHE, "triton")
atexit.register(shutil.rmtree, _INDUCTOR_CACHE, True)

import signal  # noqa: E402

# Ctrl-C as a terminal delivers it, for this process and the commands the tests start: a run
# launched with SIGINT ignored (a background job of a non-interactive shell, nohup) passes the
# ignore on, Python then installs no KeyboardInterrupt handler, and the interrupt tests would
# see a command that never stops (a handler, unlike an ignore, is reset to the default when a
# child starts, where Python installs its own).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)

import torch  # noqa: E402

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

sys.path.insert(0, str(Path(__file__).parent))
import reference_glow as R  # noqa: E402

TINY = dict(n_mel_channels=4, n_flows=8, n_group=8, n_early_every=4, n_early_size=2,
            n_layers=3, n_channels=8, kernel_size=3)


def clone_module(model):
    """deepcopy refuses weight-normed modules; a pickle round trip copies them."""
    import io

    buffer = io.BytesIO()
    with R.nvidia_modules(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(model, buffer)
        buffer.seek(0)
        return torch.load(buffer, weights_only=False)


def save_nvidia_pickle(model, path, legacy=True, remove_weight_norm=False, extra=True):
    """What NVIDIA's train.py writes: {'model': <module>, 'iteration', 'optimizer', 'learning_rate'}."""
    model = clone_module(model)
    if remove_weight_norm:
        model = R.WaveGlow.remove_weightnorm(model)
    payload = {"model": model}
    if extra:
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
        payload.update(iteration=1234, optimizer=optimizer.state_dict(), learning_rate=1e-4)
    with R.nvidia_modules(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    return Path(path)


def state_dict_of(model, remove_weight_norm=False):
    model = clone_module(model)
    if remove_weight_norm:
        model = R.WaveGlow.remove_weightnorm(model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def available_devices() -> list[str]:
    """The devices the exactness tests run on: the CPU always, CUDA and MPS where present."""
    devices = ["cpu"]
    if torch.cuda.is_available():
        devices.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        devices.append("mps")
    return devices


@pytest.fixture
def exact_float32():
    """On CUDA, float32 means float32: TF32 (10-bit mantissa products) off for cuDNN's
    convolutions and for matrix products, restored afterwards."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(params=available_devices())
def device(request, exact_float32):
    """Each available device in turn, with float32 exact (TF32 off) while the test runs."""
    return torch.device(request.param)


@pytest.fixture(scope="session")
def reference_models():
    """(layout, glow_old?) -> randomised reference model, 12 flows so odd/even flows both occur."""
    return {(layout, old): R.build(layout=layout, old=old, n_flows=12, scale=0.08, seed=i)
            for i, (layout, old) in enumerate((l, o) for l in R.LAYOUTS for o in (False, True))}


@pytest.fixture(scope="session")
def tiny_reference():
    return R.build(**TINY, scale=0.08, seed=7)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_reference):
    """An NVIDIA train.py-style legacy pickle of the tiny reference model."""
    path = tmp_path_factory.mktemp("ckpt") / "tiny_waveglow.pt"
    return save_nvidia_pickle(tiny_reference, path, legacy=True)


def read_until_closed(leader: int) -> bytes:
    """Everything a child writes to the pseudo-terminal whose ``leader`` end this is, until it
    closes its end (then the leader is closed too)."""
    shown = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            shown += chunk
    finally:
        os.close(leader)
    return shown


def one_error_line(err: str, *needles: str) -> str:
    """The single "error:" line of a run's stderr, holding each of ``needles``; no traceback."""
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def communicate_or_fail(proc: subprocess.Popen, timeout: float, what: str) -> tuple[bytes, bytes]:
    """(stdout, stderr) of ``proc`` (started with ``start_new_session=True``); past ``timeout``
    (a hang) its whole process group is killed and the test fails naming ``what``."""
    import signal

    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"{what} did not end within {timeout} s (killed)")


def run_cli(*args, input=None, env=None, cwd=None):
    """Run the real console entry point in a subprocess (as a user would)."""
    full_env = {**os.environ, "WAVEGLOW_OFFLINE": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "waveglow_cli", *map(str, args)], input=input,
                          capture_output=True, env=full_env, cwd=cwd, timeout=300)


def engine_of(source, device, dtype, kind: str = "auto", cache_dir=None):
    """The engine the selection table picks for ``source`` (a checkpoint or a float32 model:
    a checkpoint's is built first; a model's eager engine casts and moves that module) on
    ``device`` in ``dtype``, or the ``kind`` asked for: what the loader builds first."""
    from waveglow_cli.checkpoints.reader import Checkpoint
    from waveglow_cli.engines.devices import precision_name
    from waveglow_cli.engines.select import build_engine, choose_engine

    model = source.build_model() if isinstance(source, Checkpoint) else source
    pick = choose_engine(model, device, precision_name(dtype), kind).first
    return build_engine(pick, model, cache_dir)
