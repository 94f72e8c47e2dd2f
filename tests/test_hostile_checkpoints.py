"""Hostile checkpoints built by hand: each must fail with one named line and change nothing.

These are the first hardening round's attacks against the checkpoint reader: torch's own containers (the
torch<=0.3 tar container, the legacy stream, the zip archive) parsed by ``torch.load`` reached
code that extracts archives and writes files; the allow-list unpickler let a pickle mutate the
callables it allows and allocate whatever it asked for.  Every file here is built in the test
(nothing from the network), and the good paths they guard are checked against torch itself.
"""

from __future__ import annotations

import collections
import io
import os
import pickle
import stat
import struct
import subprocess
import sys
import tarfile
import textwrap
import types
import warnings
import zipfile
from pathlib import Path

import pytest
import reference_glow as R
import torch
from conftest import TINY, run_cli, save_nvidia_pickle, state_dict_of

from waveglow_cli.checkpoints.reader import read_checkpoint, sniff_format
from waveglow_cli.errors import CheckpointError, UnsafePickleError

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER
LEGACY_PROTOCOL = 1001


# ---------------------------------------------------------------------------------------------
# Builders: torch's containers written by hand, so that any field can be made hostile


class FakeStorage:
    """Pickled as torch's storage persistent id, declaring ``numel`` elements."""

    def __init__(self, key: str, numel: int, storage_type=torch.FloatStorage):
        self.key, self.numel, self.storage_type = key, numel, storage_type


class FakeTensor:
    """Pickled exactly as torch pickles a tensor: _rebuild_tensor_v2(storage, offset, ...)."""

    def __init__(self, storage, size, stride, offset=0):
        self.storage, self.size, self.stride, self.offset = storage, size, stride, offset

    def __reduce__(self):
        return (torch._utils._rebuild_tensor_v2,
                (self.storage, self.offset, tuple(self.size), tuple(self.stride), False,
                 collections.OrderedDict()))


class _Pickler(pickle.Pickler):
    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, FakeStorage):
            pid = ("storage", obj.storage_type, obj.key, "cpu", obj.numel)
            return pid + (None,) if self.legacy else pid
        return None


def dumps(obj, legacy=True) -> bytes:
    buffer = io.BytesIO()
    _Pickler(buffer, legacy).dump(obj)
    return buffer.getvalue()


def legacy_file(path, main: bytes, storages=()) -> Path:
    """torch's pre-1.6 stream: magic, protocol, sys info, main pickle, keys, raw storages.
    ``storages`` is [(key, element count written in the file, raw bytes)]."""
    parts = [pickle.dumps(LEGACY_MAGIC, protocol=2), pickle.dumps(LEGACY_PROTOCOL, protocol=2),
             pickle.dumps({"protocol_version": LEGACY_PROTOCOL, "little_endian": True,
                           "type_sizes": {"short": 2, "int": 4, "long": 4}}, protocol=2),
             main, pickle.dumps([key for key, _, _ in storages], protocol=2)]
    for _, count, data in storages:
        parts += [struct.pack("<q", count), data]
    Path(path).write_bytes(b"".join(parts))
    return Path(path)


def zip_file(path, main: bytes, records=None) -> Path:
    """torch's 1.6+ zip archive: archive/data.pkl and archive/data/<key> records."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        archive.writestr("archive/data.pkl", main)
        archive.writestr("archive/byteorder", "little")
        for key, data in (records or {}).items():
            archive.writestr(f"archive/data/{key}", data)
        archive.writestr("archive/version", "3\n")
    return Path(path)


def floats(n, start=0.0) -> bytes:
    return torch.arange(n, dtype=torch.float32).add(start).numpy().tobytes()


def fake_glow_module(monkeypatch):
    """A class pickled as glow.WaveGlow (what NVIDIA's pickles name), for hand-made pickles."""
    module = types.ModuleType("glow")

    class WaveGlow:
        pass

    WaveGlow.__module__, WaveGlow.__qualname__ = "glow", "WaveGlow"
    module.WaveGlow = WaveGlow
    monkeypatch.setitem(sys.modules, "glow", module)
    return WaveGlow


def one_line(error: Exception, path: Path) -> str:
    text = str(error)
    assert "\n" not in text and str(path) in text
    return text


def cli_with_deadline(*args, cwd=None, timeout=60):
    """The CLI in a subprocess; a hang becomes a test failure after ``timeout`` seconds."""
    try:
        return subprocess.run([sys.executable, "-m", "waveglow_cli", *map(str, args)],
                              capture_output=True, cwd=cwd, timeout=timeout,
                              env={**os.environ, "WAVEGLOW_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"waveglow {' '.join(map(str, args))} hung for {timeout} s")


def cli_error_line(result, path: Path) -> str:
    """The CLI failed with exit 1 and one `error:` line naming the file, no traceback."""
    err = result.stderr.decode()
    assert result.returncode == 1, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert path.name in lines[0] and "internal error" not in lines[0]
    return lines[0]


# Peak memory of reading one file, in a fresh interpreter (after torch's import).
_MEASURE = textwrap.dedent("""
    import resource, sys
    from waveglow_cli.checkpoints.reader import read_checkpoint
    from waveglow_cli.errors import CheckpointError
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    try:
        read_checkpoint(sys.argv[1])
        print("LOADED")
    except CheckpointError as e:
        print("ERROR", e)
    print("GROWTH_KB", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base)
""")


def measure_read(path: Path) -> tuple[str, int]:
    """(the CheckpointError line or LOADED, peak RSS growth in MB) of reading ``path``."""
    result = subprocess.run([sys.executable, "-c", _MEASURE, str(path)], capture_output=True,
                            timeout=120, env={**os.environ, "WAVEGLOW_OFFLINE": "1"})
    out = result.stdout.decode().splitlines()
    assert result.returncode == 0 and len(out) == 2, result.stderr.decode()[-2000:]
    return out[0], int(out[1].split()[1]) // 1024


# ---------------------------------------------------------------------------------------------
# The builders are torch's format (good paths)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_hand_built_files_are_torch_files_and_read_alike(tmp_path, legacy):
    """Guards the builders below: torch itself reads what they write, and so do we, to the
    same tensors (including a transposed view and two tensors sharing one storage)."""
    from waveglow_cli.checkpoints.torch_container import read_torch_file

    storage = FakeStorage("0", 12)
    payload = {"a": FakeTensor(storage, (3, 4), (4, 1)), "b": FakeTensor(storage, (4, 3), (1, 4)),
               "c": FakeTensor(storage, (2,), (1,), offset=10), "n": 5}
    main = dumps(payload, legacy)
    path = (legacy_file(tmp_path / "t.pt", main, [("0", 12, floats(12))]) if legacy
            else zip_file(tmp_path / "t.pt", main, {"0": floats(12)}))
    expected = torch.load(path, weights_only=True)
    with path.open("rb") as f:
        got, container = read_torch_file(f, "torch-legacy" if legacy else "torch-zip")
    assert container == ("legacy" if legacy else "zip")
    assert got["n"] == 5 and set(got) == set(expected)
    for key in "abc":
        assert torch.equal(got[key], expected[key])


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_numpy_scalars_and_shared_tensors_still_load(tmp_path, tiny_reference, legacy):
    """Training scripts store numpy scalars (a dtype object rebuilt with BUILD) and optimizer
    state sharing tensors with the model: the stricter unpickler still reads them, alike."""
    import numpy as np

    from waveglow_cli.checkpoints.torch_container import read_torch_file

    sd = state_dict_of(tiny_reference)
    payload = {"state_dict": sd, "best_loss": np.float64(-5.25), "epoch": np.int32(3),
               "ema": {"shadow": sd["upsample.bias"]}, "name": b"\x00\xffbytes"}
    path = tmp_path / "dle.pt"
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    with path.open("rb") as f:
        got, _ = read_torch_file(f, "torch-legacy" if legacy else "torch-zip")
    assert got["best_loss"] == -5.25 and got["epoch"] == 3 and got["name"] == b"\x00\xffbytes"
    assert all(torch.equal(got["state_dict"][k], v) for k, v in sd.items())
    assert got["ema"]["shadow"].data_ptr() == got["state_dict"]["upsample.bias"].data_ptr()
    plain = tmp_path / "plain.pt"
    torch.save(sd, plain)
    a, b = read_checkpoint(path), read_checkpoint(plain)
    assert a.config == b.config
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_raw_state_dict_with_its_metadata_loads(tmp_path, legacy):
    """module.state_dict() is an OrderedDict whose '_metadata' attribute is pickled as BUILD
    state on the instance: allowed there (and only as plain attributes)."""
    from waveglow_cli.model.waveglow import WaveGlow, WaveGlowConfig

    config = WaveGlowConfig(n_mel_channels=4, n_flows=4, n_group=4, n_early_every=2,
                            n_early_size=2, n_layers=2, n_channels=4, upsample_kernel=16,
                            hop_length=4)
    model = WaveGlow(config)
    path = tmp_path / "sd.pt"
    torch.save(model.state_dict(), path, _use_new_zipfile_serialization=not legacy)
    ckpt = read_checkpoint(path)
    assert ckpt.config == config
    assert all(torch.equal(ckpt.state_dict[k], v) for k, v in model.state_dict().items())


def test_state_on_an_ordered_dict_cannot_shadow_its_methods(tmp_path):
    """BUILD on an OrderedDict instance sets attributes; one named like a method ('items')
    would replace it for whatever reads the dict next."""
    main = (b"\x80\x02ccollections\nOrderedDict\n)R}X\x05\x00\x00\x00items"
            b"c__builtin__\nlist\nsb.")
    path = legacy_file(tmp_path / "evil.pt", main)
    with pytest.raises(CheckpointError, match="refused to load: .*'items' on an OrderedDict"):
        read_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# torch<=0.3 tar container


def _tar_with(path: Path, member: tarfile.TarInfo) -> Path:
    """A tar whose first member is named '(' (so its first byte looks like a legacy pickle),
    then ``member`` named 'storages' (what torch's tar loader extracts, unfiltered)."""
    with tarfile.open(path, "w", format=tarfile.GNU_FORMAT) as tar:
        first = tarfile.TarInfo("(")
        first.size = 4
        tar.addfile(first, io.BytesIO(b"}q\x00."))
        tar.addfile(member)
    return path


def test_tar_container_hard_link_is_refused_and_changes_nothing(tmp_path):
    """torch.load extracted a hard-link member named 'storages' to an absolute path with mode
    06777: the target became setuid and world-writable.  Refused before any extraction."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    victim.chmod(0o644)
    link = tarfile.TarInfo("storages")
    link.type, link.linkname, link.mode = tarfile.LNKTYPE, str(victim), 0o6777
    path = _tar_with(tmp_path / "evil.pt", link)
    assert path.read_bytes()[:1] == b"("
    assert sniff_format(path.read_bytes()[:512], path.stat().st_size) == "tar"
    before = sorted(p.name for p in tmp_path.iterdir())

    with pytest.raises(CheckpointError, match="tar archive.*not supported") as info:
        read_checkpoint(path)
    one_line(info.value, path)
    line = cli_error_line(run_cli("info", path, cwd=tmp_path), path)
    assert "tar archive" in line
    assert stat.S_IMODE(victim.stat().st_mode) == 0o644 and victim.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_tar_container_fifo_member_does_not_hang(tmp_path):
    """A FIFO member made torch's tar loader block forever (and under fetch, hold the lock)."""
    fifo = tarfile.TarInfo("storages")
    fifo.type = tarfile.FIFOTYPE
    path = _tar_with(tmp_path / "evil.pt", fifo)
    before = sorted(p.name for p in tmp_path.iterdir())
    line = cli_error_line(cli_with_deadline("info", path, cwd=tmp_path), path)
    assert "tar archive" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_a_fifo_given_as_the_checkpoint_does_not_hang(tmp_path):
    """Opening a FIFO blocks until a writer comes: refused from its type, never opened."""
    path = tmp_path / "model.pt"
    os.mkfifo(path)
    line = cli_error_line(cli_with_deadline("info", path), path)
    assert "not a regular file" in line


# ---------------------------------------------------------------------------------------------
# BUILD on allow-listed callables


def _build_on_global(module: str, name: str, patch_name: str) -> bytes:
    """Opcodes (no memo, stack left as found) that set ``__name__`` and ``dump_patches`` on an
    allowed global and then name it in a ('module', cls, file, source) persistent id, which
    made torch's legacy loader compare sources and write ``<__name__>.patch``."""
    def text(s: str) -> bytes:
        data = s.encode()
        return b"X" + struct.pack("<I", len(data)) + data

    glob = f"c{module}\n{name}\n".encode()
    build = (glob + b"}(" + text("__name__") + text(patch_name) + text("dump_patches") + b"\x88ub0")
    persid = b"(" + text("module") + glob + text("evil.py") + text("import os  # source") + b"tQ0"
    return build + persid


def _with_prefix(main: bytes, prefix: bytes) -> bytes:
    assert main[:2] == b"\x80\x02"
    return main[:2] + prefix + main[2:]


@pytest.mark.parametrize("target", [("torch._utils", "_rebuild_tensor_v2"),
                                    ("collections", "OrderedDict"), ("torch", "Size")],
                         ids=["rebuild_tensor_v2", "OrderedDict", "torch.Size"])
@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_build_on_allowed_callable_is_refused_inside_a_good_checkpoint(
        tmp_path, tiny_reference, monkeypatch, target, legacy):
    """A BUILD opcode on an allow-listed function or class renamed it (for the rest of the
    process) and made torch write '<name>.patch' with content from the file, from a
    checkpoint that otherwise loads and synthesises normally.  Refused; nothing written,
    nothing renamed."""
    from waveglow_cli.checkpoints import safe_pickle as safe_pickle

    monkeypatch.chdir(tmp_path)
    good = save_nvidia_pickle(tiny_reference, tmp_path / "good.pt", legacy=legacy)
    read_checkpoint(good)  # the carrier is a good checkpoint
    outside = tmp_path / "elsewhere" / "pwned"
    outside.parent.mkdir()
    injected = _build_on_global(*target, str(outside))
    path = tmp_path / "evil.pt"
    if legacy:
        data = good.read_bytes()
        # The main pickle is the fourth one: after magic, protocol and sys info.
        reader = io.BytesIO(data)
        for _ in range(3):
            pickle.load(reader)
        start = reader.tell()
        path.write_bytes(data[:start] + _with_prefix(data[start:], injected))
    else:
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as dst:
            for info in src.infolist():
                body = src.read(info)
                if info.filename.endswith("/data.pkl"):
                    body = _with_prefix(body, injected)
                dst.writestr(info, body)
    names_before = {id(v): getattr(v, "__name__", None)
                    for v in vars(safe_pickle).values() if callable(v)}
    with pytest.raises(CheckpointError, match="refused to load: .*sets the state of") as info:
        read_checkpoint(path)
    one_line(info.value, path)
    assert not list(tmp_path.rglob("*.patch")) and not outside.with_suffix(".patch").exists()
    assert torch._utils._rebuild_tensor_v2.__name__ == "_rebuild_tensor_v2"
    assert collections.OrderedDict.__name__ == "OrderedDict" and torch.Size.__name__ == "Size"
    assert not hasattr(collections.OrderedDict, "dump_patches")
    assert names_before == {id(v): getattr(v, "__name__", None)
                            for v in vars(safe_pickle).values() if callable(v)}
    read_checkpoint(good)  # and the good one still loads afterwards


def test_state_cannot_plant_a_setstate_in_a_stand_in(tmp_path):
    """A first BUILD could put '__setstate__' (an allowed callable) in a stand-in's __dict__
    for a second BUILD to call with any argument (bytearray(2**30)); the class's method is
    what runs, and dunder keys are not kept."""
    from waveglow_cli.checkpoints.torch_container import read_torch_file

    main = (b"\x80\x02}X\x05\x00\x00\x00modelcglow\nWaveGlow\n)\x81"      # {'model': stand-in
            b"}X\x0c\x00\x00\x00__setstate__c__builtin__\nbytearray\nsb"   # BUILD {'__setstate__': ..}
            b"J\x00\x00\x00@bs.")                                          # BUILD 2**30 }
    path = legacy_file(tmp_path / "evil.pt", main)
    with path.open("rb") as f:
        obj, _ = read_torch_file(f, "torch-legacy")
    model = obj["model"]
    assert "__setstate__" not in model.__dict__ and model._state == 2**30
    with pytest.raises(CheckpointError, match="no WaveGlow tensors"):
        read_checkpoint(path)


# ---------------------------------------------------------------------------------------------
# Allocation bombs


def test_bytearray_bomb_allocates_nothing(tmp_path):
    """A 40-byte pickle calling bytearray(2**30) allocated 1 GB (1.26 GB RSS)."""
    path = tmp_path / "bomb.pt"
    # bytearray(bytearray(2**30)): the copy touches every page of the gigabyte.
    path.write_bytes(b"\x80\x02c__builtin__\nbytearray\nq\x00h\x00J\x00\x00\x00@\x85R\x85R.")
    assert path.stat().st_size < 48
    line, growth = measure_read(path)
    assert line.startswith("ERROR") and "bytearray(...) not made from bytes" in line
    assert str(path) in line
    assert growth < 400, f"{growth} MB for a {path.stat().st_size}-byte file"


def test_bytearray8_opcode_cannot_declare_more_than_the_file(tmp_path):
    """Protocol 5's BYTEARRAY8 allocates its declared length before reading: 1 TiB declared."""
    path = tmp_path / "bomb.pt"
    path.write_bytes(b"\x80\x05\x96" + struct.pack("<Q", 1 << 40) + b".")
    with pytest.raises(CheckpointError, match="truncated|ends early") as info:
        read_checkpoint(path)
    one_line(info.value, path)


def test_copying_one_list_many_times_is_bounded(tmp_path):
    """tuple(big_list) repeated through the memo copies quadratically many elements from a
    linearly sized pickle; the copies are counted against the pickle's length."""
    body = b"\x80\x02]q\x00(" + b"K\x01" * 20000 + b"e"                 # memo 0: 20k-item list
    body += b"c__builtin__\ntuple\nq\x01" + b"h\x01h\x00\x85R" * 5000  # 5000 kept copies
    path = legacy_file(tmp_path / "bomb.pt", body + b"N.")
    with pytest.raises(CheckpointError, match="allocation bomb") as info:
        read_checkpoint(path)
    one_line(info.value, path)


def _giant_shapes() -> dict[str, tuple[int, ...]]:
    """The tensor shapes of a WaveGlow like TINY but with 8192 channels (and 3 layers)."""
    ref = R.build(**{**TINY, "n_channels": 10}, scale=0.08)
    scale = {10: 8192, 20: 16384, 60: 49152}  # C, 2C, 2C * n_layers
    return {k: tuple(scale.get(d, d) for d in v.shape)
            for k, v in state_dict_of(ref, remove_weight_norm=True).items()}


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_stride0_giant_is_refused_in_bounded_memory(tmp_path, legacy):
    """Stride-0 expanded tensors in a few-KB file declared an 8192-channel WaveGlow: 3 GB and
    10 s before anything refused it.  Refused while reading, memory bounded."""
    storage = FakeStorage("0", 1)
    payload = {k: FakeTensor(storage, shape, (0,) * len(shape))
               for k, shape in _giant_shapes().items()}
    main = dumps(payload, legacy)
    path = (legacy_file(tmp_path / "giant.pt", main, [("0", 1, floats(1))]) if legacy
            else zip_file(tmp_path / "giant.pt", main, {"0": floats(1)}))
    assert path.stat().st_size < 20_000
    line, growth = measure_read(path)
    assert line.startswith("ERROR") and "stride-0" in line and str(path) in line
    assert growth < 400, f"{growth} MB for a {path.stat().st_size}-byte file"


def test_tensors_sharing_one_storage_cannot_exceed_the_file(tmp_path):
    """Without stride 0, many tensors viewing one storage still multiply it; the weights a
    checkpoint declares may not exceed its file size (plus slack)."""
    numel = 1 << 18  # 1 MiB of floats
    storage = FakeStorage("0", numel)
    payload = {f"WN.{i}.start.weight": FakeTensor(storage, (numel,), (1,)) for i in range(300)}
    path = legacy_file(tmp_path / "shared.pt", dumps(payload), [("0", numel, floats(numel))])
    with pytest.raises(CheckpointError, match="declare .* bytes of weights, more than") as info:
        read_checkpoint(path)
    one_line(info.value, path)


def test_architecture_larger_than_the_file_is_refused_before_building_it(tmp_path):
    """The shape check builds a model of the architecture the tensors imply: one real
    8192-row start tensor among tiny ones implied gigabytes of weights."""
    sd = state_dict_of(R.build(**TINY), remove_weight_norm=True)
    sd = {k: v for k, v in sd.items()}
    sd["WN.0.start.weight"] = torch.zeros(8192, 4, 1)
    path = tmp_path / "arch.pt"
    torch.save(sd, path)
    line, growth = measure_read(path)
    assert line.startswith("ERROR") and "more than the file holds" in line
    assert growth < 400


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_storage_larger_than_the_file_is_refused_before_allocating(tmp_path, legacy):
    """A storage declaring 2**40 floats: its size is checked against the file first."""
    storage = FakeStorage("0", 1 << 40)
    main = dumps({"w": FakeTensor(storage, (1 << 40,), (1,))}, legacy)
    path = (legacy_file(tmp_path / "big.pt", main, [("0", 1 << 40, floats(4))]) if legacy
            else zip_file(tmp_path / "big.pt", main, {"0": floats(4)}))
    with pytest.raises(CheckpointError, match="declares .* bytes") as info:
        read_checkpoint(path)
    one_line(info.value, path)


def test_legacy_element_count_must_match_the_pickle(tmp_path):
    """The count before a legacy storage's bytes must be the one its pickle declared."""
    main = dumps({"w": FakeTensor(FakeStorage("0", 4), (4,), (1,))})
    path = legacy_file(tmp_path / "w.pt", main, [("0", 1 << 30, floats(4))])
    with pytest.raises(CheckpointError, match="holds 1073741824 elements, the pickle declares 4"):
        read_checkpoint(path)


@pytest.mark.parametrize("size,stride,offset,reason", [
    ((4, 4), (1, 1), 0, "overlapping"),      # elements share memory
    ((8,), (1,), 0, "beyond its storage"),   # past the end
    ((2,), (1,), 3, "beyond its storage"),   # offset past the end
    ((2, 2), (2, -1), 0, "negative"),
])
def test_bad_tensor_views_are_refused(tmp_path, size, stride, offset, reason):
    """Every element of a tensor lies inside its storage and no two share memory."""
    main = dumps({"w": FakeTensor(FakeStorage("0", 4), size, stride, offset)})
    path = legacy_file(tmp_path / "w.pt", main, [("0", 4, floats(4))])
    with pytest.raises(CheckpointError, match=reason) as info:
        read_checkpoint(path)
    one_line(info.value, path)


# ---------------------------------------------------------------------------------------------
# Cycles and nesting


@pytest.mark.parametrize("legacy", [True, False], ids=["legacy", "zip"])
def test_self_referencing_module_is_a_named_error(tmp_path, monkeypatch, legacy):
    """A pickled module whose _modules holds itself gave 'internal error' (RecursionError)."""
    WaveGlow = fake_glow_module(monkeypatch)
    model = WaveGlow()
    model._parameters, model._buffers = collections.OrderedDict(), collections.OrderedDict()
    model._modules = collections.OrderedDict(upsample=model)
    main = dumps({"model": model}, legacy)
    path = legacy_file(tmp_path / "loop.pt", main) if legacy else zip_file(tmp_path / "loop.pt", main)
    with pytest.raises(CheckpointError, match="glow.WaveGlow contains itself") as info:
        read_checkpoint(path)
    one_line(info.value, path)
    if legacy:  # the CLI's line, once
        line = cli_error_line(run_cli("info", path), path)
        assert "contains itself" in line


def test_deeply_nested_modules_are_a_named_error(tmp_path):
    """A chain of 5000 nested modules overflowed the recursive walk of the module tree."""
    def text(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()

    body = b"\x80\x02cglow\nWaveGlow\nq\x00h\x00)\x81q\x010"        # memo 1: innermost
    level = (b"h\x00)\x81}(" + text("_modules") + b"}" + text("upsample") + b"h\x01su"
             + b"bq\x010")                                            # memo 1: wraps memo 1
    main = body + level * 5000 + b"}" + text("model") + b"h\x01s."
    path = legacy_file(tmp_path / "deep.pt", main)
    with pytest.raises(CheckpointError, match="nesting too deep") as info:
        read_checkpoint(path)
    one_line(info.value, path)


def test_deeply_nested_tuples_are_refused_before_hashing(tmp_path):
    """Python hashes tuples recursively: a 100,000-deep tuple as a dict key would overflow
    the C stack while unpickling.  Tuple depth is bounded as the tuples are made."""
    main = b"\x80\x02}N" + b"\x85" * 100_000 + b"Ns."
    path = legacy_file(tmp_path / "deep.pt", main)
    with pytest.raises(CheckpointError, match="nesting too deep") as info:
        read_checkpoint(path)
    one_line(info.value, path)


# ---------------------------------------------------------------------------------------------
# Other containers torch.load would have dispatched


def test_torchscript_archive_is_refused_without_running_it(tmp_path):
    """torch.load hands a TorchScript zip to torch.jit.load, which compiles code from it."""
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit is deprecated: only the file is wanted
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), str(path))
    with pytest.raises(CheckpointError, match="TorchScript") as info:
        read_checkpoint(path)
    one_line(info.value, path)


def test_hostile_global_in_hand_made_legacy_file_is_refused(tmp_path):
    """The allow-list still holds in our own container reader (os.system is never imported)."""
    path = legacy_file(tmp_path / "evil.pt", b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueq\x00\x85R.")
    with pytest.raises(UnsafePickleError, match="os.system"):
        read_checkpoint(path)


def test_names_from_the_file_cannot_break_the_one_line_message(tmp_path):
    """Storage keys and global names are the file's text: a newline in them must not split
    (or forge) the error line."""
    main = dumps({"w": FakeTensor(FakeStorage("k\nerror: forged", 4), (4,), (1,))})
    path = legacy_file(tmp_path / "key.pt", main)  # the storage has no data
    with pytest.raises(CheckpointError, match="has no data") as info:
        read_checkpoint(path)
    one_line(info.value, path)

    def text(s: str) -> bytes:
        return b"X" + struct.pack("<I", len(s)) + s.encode()

    path = legacy_file(tmp_path / "global.pt", b"\x80\x04" + text("os\nforged") + text("system")
                       + b"\x93.")
    with pytest.raises(UnsafePickleError) as info:
        read_checkpoint(path)
    one_line(info.value, path)
