"""Hostile side files and decoded audio (the second hardening round).

Every side file read whole (a mel convention TOML, ``--mel-stats``, ``WAVEGLOW_REGISTRY``) goes
through one bounded open, and plot inputs through the inputs' own: a name that leads to
``/dev/zero``, ``/dev/urandom`` or a FIFO is refused before a byte is read.  Conventions and
statistics are checked from their declarations before anything is built or read; decoded audio
is bounded by its header before a sample is decoded; ``compare`` never reports ``nan``.  Each
case ends in one line naming the file, never a hang (the subprocess timeout is the guard, not
a timing assertion), a traceback or an allocation of what a header merely claims (the child's
peak RSS is bounded generously).
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from conftest import communicate_or_fail, one_error_line, run_cli

from waveglow_cli.errors import AudioFileError, UsageError
from waveglow_cli.features.conventions import (
    MAX_CONVENTION_BYTES,
    convention_from_toml,
    load_mel_stats,
    resolve_convention,
)

h5py = pytest.importorskip("h5py")

# Far above what any of these runs needs when bounded (~0.25 GB idle, ~1 GB for an hour of
# audio), far below what the attacks took before the fix (2.6 to 5.9 GB, or out of memory).
RSS_LIMIT = 1_500_000_000


def run_measured(tmp_path: Path, *args: object, env: dict[str, str] | None = None,
                 timeout: float = 300) -> tuple[int, str, str, int]:
    """Run the CLI in a fresh wrapper process and return (exit code, stdout, stderr, the CLI's
    peak RSS in bytes): the wrapper's only child is the CLI, so RUSAGE_CHILDREN is that
    run alone.  A run past ``timeout`` (a hang) is killed with its process group and fails."""
    rss_file = tmp_path / f"rss.{os.getpid()}.{len(list(tmp_path.glob('rss.*')))}"
    wrapper = ("import resource, subprocess, sys\n"
               "r = subprocess.run(sys.argv[2:])\n"
               "open(sys.argv[1], 'w').write(str(resource.getrusage("
               "resource.RUSAGE_CHILDREN).ru_maxrss))\n"
               "sys.exit(r.returncode)\n")
    full_env = {**os.environ, "WAVEGLOW_OFFLINE": "1", "WAVEGLOW_HOME": str(tmp_path / "home"),
                **(env or {})}
    proc = subprocess.Popen([sys.executable, "-c", wrapper, str(rss_file), sys.executable, "-m",
                             "waveglow_cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=full_env, start_new_session=True)
    out, err = communicate_or_fail(proc, timeout, f"waveglow {' '.join(map(str, args))}")
    kib = int(rss_file.read_text()) if rss_file.exists() else 0
    scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
    return proc.returncode, out.decode(), err.decode(), kib * scale


@pytest.fixture
def mel_file(tmp_path) -> Path:
    path = tmp_path / "feats.npy"
    np.save(path, np.zeros((80, 20), dtype=np.float32))
    return path


def special_file(tmp_path: Path, kind: str, name: str) -> Path:
    """``name`` in tmp_path leading to a device (a symlink) or being a FIFO nobody writes."""
    path = tmp_path / name
    if kind == "fifo":
        os.mkfifo(path)
    else:
        device = f"/dev/{kind}"
        if not os.path.exists(device):
            pytest.skip(f"no {device} here")
        path.symlink_to(device)
    return path


# -- devices and FIFOs behind side-file names -------------------------------------------------

SPECIALS = ("zero", "urandom", "fifo")


@pytest.mark.parametrize("kind", SPECIALS)
@pytest.mark.parametrize("surface", ["mel --from", "--mel-stats .npy", "--mel-stats .h5",
                                     "WAVEGLOW_REGISTRY", "plot input"])
def test_a_device_or_fifo_behind_a_side_file_name_is_refused_at_once(tmp_path, mel_file, kind,
                                                                    surface):
    """``--from conv.toml`` linked to /dev/zero read until out of memory (5.9 GB; 2.6 GB and
    "out of memory" under a 3 GB cap), a FIFO hung.  Now fstat of the opened descriptor
    refuses it before a byte is read: one line naming the file, exit 1 or 2, small RSS."""
    env = None
    if surface == "mel --from":
        target = special_file(tmp_path, kind, "conv.toml")
        args = ["mel", mel_file, "--from", target, "-o", tmp_path / "o.npy"]
    elif surface.startswith("--mel-stats"):
        target = special_file(tmp_path, kind, "stats" + surface.split()[-1])
        args = ["mel", mel_file, "--from", "pwg", "--mel-stats", target, "-o", tmp_path / "o.npy"]
    elif surface == "WAVEGLOW_REGISTRY":
        target = special_file(tmp_path, kind, "registry.toml")
        args, env = ["list"], {"WAVEGLOW_REGISTRY": str(target)}
    else:
        pytest.importorskip("matplotlib")
        target = special_file(tmp_path, kind, "input.npy")
        args = ["plot", target, "-o", tmp_path / "o.png"]
    code, _, err, rss = run_measured(tmp_path, *args, env=env, timeout=120)
    assert code in (1, 2), err
    line = one_error_line(err, str(target))
    if surface != "plot input" or kind != "fifo":  # a FIFO mel input is supported: none came
        assert "not a regular file" in line, line
    assert rss < RSS_LIMIT, rss


def test_the_shared_open_refuses_folders_and_oversized_files(tmp_path):
    from waveglow_cli.fileio import read_side_file

    with pytest.raises(UsageError, match="is a directory, not a regular file"):
        read_side_file(tmp_path, "mel convention file", 1000)
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * 1001)
    with pytest.raises(UsageError, match=r"big.toml: cannot read mel convention file \(larger "):
        read_side_file(big, "mel convention file", 1000)
    assert read_side_file(big, "mel convention file", 1001) == b"#" * 1001
    with pytest.raises(UsageError, match="no such mel statistics file"):
        read_side_file(tmp_path / "missing.h5", "mel statistics file", 1000)


# -- convention TOMLs ---------------------------------------------------------------------------

BASE = 'sample_rate = 22050\nn_mels = 80\n'


@pytest.mark.parametrize("extra, field", [
    ("sample_rate = 16\n", "sample_rate=16"),
    ("sample_rate = 1000000000\n", "sample_rate=1000000000"),
    ("hop_length = 1000000\n", "hop_length=1000000"),
    ("n_fft = 1048576\nwin_length = 1024\n", "n_fft=1048576"),
    ("n_fft = 1" + "0" * 400 + "\n", "n_fft=1000"),
    ("win_length = 1048576\n", "win_length=1048576"),
    ("n_mels = 100000\n", "n_mels=100000"),
    ("n_mels = 0\n", "n_mels=0"),
    ("fmin = 20000\n", "fmin=20000"),
    ("fmax = 1e300\n", "fmax=1e+300"),
    ("power = 1e-300\n", "power=1e-300"),
    ("power = 1e300\n", "power=1e+300"),
    ("floor = 0.0\n", "floor=0.0"),
    ("floor = 1e-320\n", "floor=1e-320"),
    ("db_gain = 1e-9\n", "db_gain=1e-09"),
    ("ref_level_db = 1e300\n", "ref_level_db=1e+300"),
    ("min_level_db = -1e300\n", "min_level_db=-1e+300"),
    ("max_norm = 1e300\n", "max_norm=1e+300"),
    ("log = 3\n", "log=3"),
    ("symmetric = 1\n", "symmetric=1"),
    ('name = ["x"]\n', "name=['x']"),
    ("hop_length = 8000\nsample_rate = 22050\n", "hop_length=8000 at sample_rate=22050"),
], ids=lambda v: v if len(v) < 40 else v[:40])
def test_an_absurd_convention_value_is_one_line_naming_its_field(tmp_path, extra, field):
    """16 Hz with a hop of 10^6 asked for a 79 GiB mel (4.4 GB peak); each value is now checked
    against a range before anything is built."""
    table = dict(line.split(" = ", 1) for line in (BASE + extra).strip().splitlines())
    path = tmp_path / "absurd.toml"
    path.write_text("".join(f"{key} = {value}\n" for key, value in table.items()))
    with pytest.raises(UsageError) as caught:
        resolve_convention(str(path))
    message = str(caught.value)
    assert str(path) in message and field in message and "\n" not in message, message


def test_nesting_an_empty_filterbank_and_size_are_refused_in_one_line(tmp_path):
    """Deep nesting gave "internal error (RecursionError)", an empty filterbank "failed
    (IndexError)", a 60 MB array was still being parsed after 120 s."""
    cases = {
        "deep.toml": (BASE + "fmin = " + "[" * 30_000 + "]" * 30_000 + "\n",
                      "nested too deeply"),
        "empty.toml": (BASE + "fmin = 8000\nfmax = 8001\n", "the filterbank is empty"),
        "huge.toml": (BASE + "source = [" + "0," * (MAX_CONVENTION_BYTES // 2) + "]\n",
                      "larger than 64 KiB"),
        "digits.toml": (BASE + "n_fft = 1" + "0" * 5000 + "\n", "not valid TOML"),
        "keys.toml": (BASE + '"\\u001b[31m" = 1\n', "unknown key(s)"),
    }
    for name, (text, reason) in cases.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(UsageError) as caught:
            resolve_convention(str(tmp_path / name))
        message = str(caught.value)
        assert reason in message and name in message and "\n" not in message, message
        assert "\x1b" not in message
    with pytest.raises(UsageError, match="larger than 64 KiB"):
        convention_from_toml("given.toml", "#" * (MAX_CONVENTION_BYTES + 1))
    # A filterbank with some empty bands still converts, with one note instead of librosa's
    # two-line warning.
    from waveglow_cli.features.inputs import mel_converter
    from waveglow_cli.features.mel import MelConfig

    (tmp_path / "sparse.toml").write_text("sample_rate = 22050\nn_mels = 200\nn_fft = 256\n"
                                          "win_length = 256\nhop_length = 64\n")
    converter = mel_converter(str(tmp_path / "sparse.toml"), MelConfig())
    assert any("hold no FFT bin" in note for note in converter.notes())


def test_the_amplifying_convention_is_refused_by_the_command(tmp_path, mel_file):
    path = tmp_path / "amplify.toml"
    path.write_text("sample_rate = 16\nn_mels = 80\nn_fft = 16\nwin_length = 16\n"
                    "hop_length = 1000000\n")
    code, _, err, rss = run_measured(tmp_path, "mel", mel_file, "--from", path, "-o",
                                     tmp_path / "o.npy")
    assert code == 2
    one_error_line(err, str(path), "sample_rate=16", "hop_length=1000000")
    assert rss < RSS_LIMIT, rss


# -- --mel-stats ------------------------------------------------------------------------------


def h5_stats(path: Path, **datasets) -> Path:
    with h5py.File(path, "w") as f:
        for key, make in datasets.items():
            make(f, key)
    return path


def good_vector(f, key):
    f[key] = np.linspace(1.0, 2.0, 80)


def test_declared_hdf5_shapes_are_checked_before_reading(tmp_path, mel_file):
    """A 1.7 KB stats.h5 whose datasets are fill values made us read 2.7 GB before the band
    count was checked; 10^10 elements asked for 74.5 GiB."""
    for name, size in (("fill.h5", 3 * 10**8), ("huge.h5", 10**10)):
        path = h5_stats(tmp_path / name, **{key: lambda f, k: f.create_dataset(
            k, shape=(size,), dtype="f8", fillvalue=1.0) for key in ("mean", "scale")})
        assert path.stat().st_size < 10_000
        code, _, err, rss = run_measured(tmp_path, "mel", mel_file, "--from", "pwg",
                                         "--mel-stats", path, "-o", tmp_path / "o.npy")
        assert code == 2
        one_error_line(err, name, f"statistics for {size} bands")
        assert rss < RSS_LIMIT, rss


def test_hdf5_data_outside_the_file_is_never_used(tmp_path, mel_file):
    """External storage made us use another file's bytes (/etc/passwd was accepted as
    statistics).  Here the "secret" holds 160 well-formed floats, so reading it would pass
    every later check; a FIFO as the secret would hang any read (the timeout guards)."""
    secret = tmp_path / "secret.bin"
    secret.write_bytes(np.full(160, 3.0).tobytes())
    fifo = tmp_path / "secret.fifo"
    os.mkfifo(fifo)
    other = h5_stats(tmp_path / "other.h5", data=good_vector)
    for target in (secret, fifo):
        path = h5_stats(tmp_path / f"external-{target.suffix[1:]}.h5", **{
            key: lambda f, k, o=offset: f.create_dataset(
                k, shape=(80,), dtype="<f8", external=[(str(target), o, 640)])
            for key, offset in (("mean", 0), ("scale", 640))})
        code, _, err, _ = run_measured(tmp_path, "mel", mel_file, "--from", "pwg",
                                       "--mel-stats", path, "-o", tmp_path / "o.npy",
                                       timeout=120)
        assert code == 2
        one_error_line(err, path.name, "stored outside this file")

    def virtual(f, key):
        layout = h5py.VirtualLayout(shape=(80,), dtype="f8")
        layout[:] = h5py.VirtualSource(str(other), "data", shape=(80,))
        f.create_virtual_dataset(key, layout, fillvalue=0)

    def external_link(f, key):
        f[key] = h5py.ExternalLink(str(other), "/data")

    for name, make, reason in (("virtual.h5", virtual, "stored outside this file"),
                               ("xlink.h5", external_link, "an external link")):
        path = h5_stats(tmp_path / name, mean=make, scale=good_vector)
        with pytest.raises(UsageError, match=reason):
            load_mel_stats(path, 80)


@pytest.mark.parametrize("make, reason", [
    (lambda f, k: f.create_group(k), "is a group, not a dataset"),
    (lambda f, k: f.__setitem__(k, np.zeros(80, complex)), "dtype complex128"),
    (lambda f, k: f.__setitem__(k, np.zeros(80, [("a", "f8")])), "expected real floating"),
    (lambda f, k: f.__setitem__(k, np.zeros(80, np.int32)), "dtype int32"),
    (lambda f, k: f.__setitem__(k, np.array([b"x"] * 80)), "expected real floating"),
    (lambda f, k: f.__setitem__(k, np.zeros((80, 2))), "shape (80, 2)"),
    (lambda f, k: f.__setitem__(k, np.zeros(79)), "statistics for 79 bands"),
    (lambda f, k: f.__setitem__(k, h5py.SoftLink("/elsewhere")), "a soft link"),
    (lambda f, k: f.create_dataset(k, shape=(80,), maxshape=(None,), chunks=(1 << 21,),
                                   compression="gzip", dtype="f8"), "chunks of (2097152,)"),
    (lambda f, k: f.__setitem__(k, np.full(80, np.nan)), "finite mean and scale"),
], ids=["group", "complex", "structured", "int", "bytes", "2-d", "79", "softlink", "chunks",
        "nan"])
def test_a_malformed_stats_h5_is_one_line(tmp_path, make, reason):
    """Groups and structured dtypes gave "internal error"; complex dropped its imaginary part
    with only a warning.  Exactly the documented layout is accepted."""
    path = h5_stats(tmp_path / "stats.h5", mean=make, scale=good_vector)
    with pytest.raises(UsageError) as caught:
        load_mel_stats(path, 80)
    message = str(caught.value)
    assert reason in message and str(path) in message and "\n" not in message, message


def npy_bytes(shape: tuple[int, ...], dtype: str = "<f8", header_pad: int = 0,
              data: bytes = b"") -> bytes:
    text = f"{{'descr': {dtype!r}, 'fortran_order': False, 'shape': {shape}, }}".encode()
    text += b" " * header_pad
    text += b" " * (64 - (10 + len(text) + 1) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def saved(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def test_npy_and_npz_statistics_are_checked_from_the_header(tmp_path):
    """npz gave "internal error"; structured dtypes were accepted.  Shapes and dtypes come
    from the header (numpy's parser, its size cap) before any value is read."""
    cases = {
        "shape.npy": (npy_bytes((2, 10**12)), "statistics for 1000000000000 bands"),
        "header.npy": (npy_bytes((2, 80), header_pad=20_000), "corrupt .npy header"),
        "struct.npy": (saved(np.zeros((2, 80), [("a", "<f8")])), "expected real floating"),
        "object.npy": (npy_bytes((2, 80), "|O"), "expected real floating"),
        "complex.npy": (npy_bytes((2, 80), "<c16"), "dtype complex128"),
        "flat.npy": (npy_bytes((160,)), "(2, n_mels)"),
        "short.npy": (npy_bytes((2, 80), data=bytes(100)), "truncated"),
        "text.npy": (b"mean,scale\n", "neither HDF5 nor .npy"),
    }
    for name, (data, reason) in cases.items():
        (tmp_path / name).write_bytes(data)
        with pytest.raises(UsageError) as caught:
            load_mel_stats(tmp_path / name, 80)
        message = str(caught.value)
        assert reason in message and name in message and "\n" not in message, message
    np.savez(tmp_path / "stats.npz", mean=np.zeros(80), scale=np.ones(80))
    with pytest.raises(UsageError, match=r"zip \(\.npz\) archive"):
        load_mel_stats(tmp_path / "stats.npz", 80)
    # The documented layouts, Fortran order and float16 included.
    pair = np.stack([np.linspace(0, 1, 80), np.linspace(1, 2, 80)])
    np.save(tmp_path / "ok.npy", np.asfortranarray(pair).astype(np.float16))
    stats = load_mel_stats(tmp_path / "ok.npy", 80)
    assert np.allclose(stats.mean, pair[0], atol=1e-3) and np.allclose(stats.scale, pair[1],
                                                                       atol=1e-3)


# -- decoded audio ----------------------------------------------------------------------------


def wav_bytes(rate: int, channels: int, frames: int, data_bytes: int | None = None) -> bytes:
    """A 16-bit PCM WAV written by hand: its header may declare anything."""
    block = channels * 2
    size = frames * block if data_bytes is None else data_bytes
    return (b"RIFF" + struct.pack("<I", (36 + size) & 0xFFFFFFFF) + b"WAVE" + b"fmt "
            + struct.pack("<IHHIIHH", 16, 1, channels, rate, rate * block, block, 16)
            + b"data" + struct.pack("<I", size & 0xFFFFFFFF) + bytes(frames * block))


def test_absurd_rates_and_lying_headers_are_refused_before_decoding(tmp_path):
    """A 60 KB WAV declaring 1 Hz took 5.4 GB and asked for 10.6 GB more (resampled up)."""
    from waveglow_cli.audio.io import read_mono

    (tmp_path / "1hz.wav").write_bytes(wav_bytes(1, 1, 30_000))
    (tmp_path / "1ghz.wav").write_bytes(wav_bytes(1_000_000_000, 1, 30_000))
    (tmp_path / "999hz.wav").write_bytes(wav_bytes(999, 1, 3000))
    for name, rate in (("1hz.wav", 1), ("1ghz.wav", 1_000_000_000), ("999hz.wav", 999)):
        with pytest.raises(AudioFileError, match=f"declares a sample rate of {rate} Hz"):
            read_mono(tmp_path / name, None, 22050)
    # A data chunk declaring 4 GB with one second behind it: what the file holds, bounded.
    (tmp_path / "liar.wav").write_bytes(wav_bytes(8000, 8, 8000, data_bytes=0xFFFFFFF0))
    mono, notes = read_mono(tmp_path / "liar.wav", None, 22050)
    assert mono.size == 22050 and not mono.any() and len(notes) == 2
    # A FLAC whose STREAMINFO declares 2^35 samples (four days): refused from the header.
    sf.write(tmp_path / "lie.flac", np.zeros(4096, np.int16), 22050)
    data = bytearray((tmp_path / "lie.flac").read_bytes())
    info = data.index(b"fLaC") + 8  # STREAMINFO body: total samples are its bits 108-143
    packed = int.from_bytes(data[info + 13:info + 18], "big")
    data[info + 13:info + 18] = ((packed & ~0xFFFFFFFFF) | (1 << 35)).to_bytes(5, "big")
    (tmp_path / "lie.flac").write_bytes(bytes(data))
    with pytest.raises(AudioFileError, match="lasts .* h .*at most 1 h"):
        read_mono(tmp_path / "lie.flac", None, 22050)


def test_every_command_refuses_a_1hz_wav_in_one_line(tmp_path, tiny_checkpoint):
    (tmp_path / "1hz.wav").write_bytes(wav_bytes(1, 1, 30_000))
    ok = tmp_path / "ok.wav"
    sf.write(ok, 0.1 * np.sin(np.arange(22050) / 10).astype(np.float32), 22050)
    for args in (["mel", tmp_path / "1hz.wav", "-o", tmp_path / "m.npy"],
                 ["synth", tmp_path / "1hz.wav", "-o", tmp_path / "s.wav", "-c", tiny_checkpoint],
                 ["score", tmp_path / "1hz.wav", "-c", tiny_checkpoint],
                 ["compare", tmp_path / "1hz.wav", ok, "--no-f0"]):
        r = run_cli(*args)
        assert r.returncode == 1, r.stderr.decode()
        one_error_line(r.stderr.decode(), "1hz.wav", "declares a sample rate of 1 Hz")


@pytest.fixture(scope="module")
def hour_of_8ch_silence(tmp_path_factory) -> Path:
    """One hour x 8 channels of silence at 22.05 kHz: a ~660 KB FLAC, written in blocks."""
    path = tmp_path_factory.mktemp("long") / "silence8.flac"
    with sf.SoundFile(path, "w", 22050, 8, "PCM_16") as f:
        block = np.zeros((22050 * 60, 8), np.int16)
        for _ in range(60):
            f.write(block)
    assert path.stat().st_size < 2_000_000
    return path


def test_an_hour_of_8_channel_silence_is_read_in_bounded_memory(tmp_path, hour_of_8ch_silence):
    """It decoded to 5.1 GB: all 8 channels of the hour at once.  Now decoded and mixed a
    block at a time, its mel computed a block of frames at a time: the right mel, in about
    the memory of the mono signal."""
    out = tmp_path / "silence.npy"
    code, _, err, rss = run_measured(tmp_path, "mel", hour_of_8ch_silence, "-o", out,
                                     timeout=600)
    assert code == 0, err
    assert "8 channels averaged to mono" in err
    assert rss < RSS_LIMIT, rss
    mel = np.load(out, mmap_mode="r")
    assert mel.shape == (80, 1 + 3600 * 22050 // 256)
    assert float(mel[:, ::997].max()) == pytest.approx(np.log(1e-5))
    # compare reads it the same way (and cuts to the shorter file).
    short = tmp_path / "short.wav"
    sf.write(short, 0.1 * np.sin(np.arange(22050) / 10).astype(np.float32), 22050)
    code, stdout, err, rss = run_measured(tmp_path, "compare", hour_of_8ch_silence, short,
                                          "--no-f0", "--json", timeout=600)
    assert code == 0, err
    assert json.loads(stdout)["files"][0]["seconds"] == 1.0
    assert rss < RSS_LIMIT, rss


def test_score_refuses_what_its_model_could_not_hold(tmp_path, tiny_checkpoint,
                                                     hour_of_8ch_silence):
    """score gave "internal error (RuntimeError ... can't allocate)": it runs the model over
    the whole file.  A file longer than the model can score in bounded memory is refused
    from its header, in one line."""
    code, _, err, rss = run_measured(tmp_path, "score", hour_of_8ch_silence, "-c",
                                     tiny_checkpoint)
    assert code == 1
    one_error_line(err, "silence8.flac", "lasts 1 h")
    assert rss < RSS_LIMIT, rss


# -- compare ----------------------------------------------------------------------------------


def test_compare_never_reports_nan(tmp_path):
    """Float samples of 1e30 gave log-mel and MCD of nan with exit 0, and --json printed a
    bare NaN (invalid JSON).  Now that pair fails in one line naming the file, the others
    are still compared, and the JSON parses."""
    ref, gen = tmp_path / "ref", tmp_path / "gen"
    ref.mkdir()
    gen.mkdir()
    tone = (0.1 * np.sin(np.arange(22050) / 10)).astype(np.float32)
    for folder in (ref, gen):
        sf.write(folder / "good.wav", tone, 22050)
    sf.write(ref / "loud.wav", np.full(22050, 1e30, np.float32), 22050, subtype="FLOAT")
    sf.write(gen / "loud.wav", tone, 22050)
    for extra in ([], ["--json"]):
        r = run_cli("compare", ref, gen, "--no-f0", *extra)
        stdout, err = r.stdout.decode(), r.stderr.decode()
        assert r.returncode == 1, err
        one_error_line(err, "loud.wav", "not finite")
        assert "NaN" not in stdout and "nan nats" not in stdout and "nan dB" not in stdout
        if extra:
            report = json.loads(stdout)
            assert [row["key"] for row in report["files"]] == ["good"]
            assert report["summary"]["files"] == 1
    r = run_cli("compare", ref / "loud.wav", gen / "loud.wav", "--json", "--no-f0")
    assert r.returncode == 1
    assert json.loads(r.stdout.decode())["files"] == []
