"""Hostile ONNX files: an .onnx file is a checkpoint too, so it is untrusted.

Every file here is built by hand with ``onnx.helper``: a lookalike of a ``waveglow export`` (our
inputs, output and metadata) whose audio is a tensor stored outside the file, in a secret file
beside it, hidden in every place a tensor can live; and files whose tensors or metadata declare
far more memory than they hold.  Each must end in one line naming the file, before
onnxruntime reads anything, and the secret's bytes must never come back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("onnx")
onnxruntime = pytest.importorskip("onnxruntime")
from conftest import TINY, run_cli  # noqa: E402
from onnx import (  # noqa: E402
    GraphProto,
    ModelProto,
    NodeProto,
    SparseTensorProto,
    TensorProto,
    helper,
    numpy_helper,
)

from waveglow_cli.engines import onnx as onnx_engine  # noqa: E402
from waveglow_cli.engines.onnx_check import MAX_ONNX_BYTES  # noqa: E402
from waveglow_cli.errors import CheckpointError  # noqa: E402
from waveglow_cli.features.mel import MelConfig  # noqa: E402
from waveglow_cli.model.waveglow import WaveGlowConfig  # noqa: E402
from waveglow_cli.settings import Settings  # noqa: E402
from waveglow_cli.vocoder import load_vocoder  # noqa: E402

HOP = 256
N_MELS = TINY["n_mel_channels"]
FRAMES = 4
SECRET = bytes((i * 37 + 11) % 251 for i in range(FRAMES * HOP))  # known, no run of zeros
BIG = 1 << 29  # float32 elements: 2 GiB once dense


def offline(tmp_path: Path) -> Settings:
    return Settings.from_env({"WAVEGLOW_HOME": str(tmp_path / "home"), "WAVEGLOW_OFFLINE": "1"})


def waveglow_props(config: dict | None = None, **changes: str) -> dict[str, str]:
    """The metadata `waveglow export` writes, for the tiny architecture."""
    props = {"waveglow.format": "waveglow-cli-onnx", "waveglow.format_version": "1",
             "waveglow.config": json.dumps(config or WaveGlowConfig(**TINY).to_dict()),
             "waveglow.sample_rate": "22050",
             "waveglow.mel": json.dumps(MelConfig(n_mels=N_MELS).to_dict()),
             "waveglow.dtype": "fp32", "waveglow.batch": "dynamic"}
    props.update(changes)
    return props


def external(name: str, n: int = len(SECRET), location: str = "secret.bin", *,
             flagged: bool = True, dtype: int = TensorProto.UINT8) -> TensorProto:
    """A tensor whose n bytes are those of ``location`` beside the model (``flagged``: marked
    EXTERNAL; otherwise only its external_data entries say so)."""
    tensor = TensorProto(name=name, data_type=dtype, dims=[n])
    if flagged:
        tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", str(n))):
        tensor.external_data.add(key=key, value=value)
    return tensor


def constant(output: str, tensor: TensorProto) -> NodeProto:
    return helper.make_node("Constant", [], [output], value=tensor)


def true(output: str) -> NodeProto:
    return constant(output, numpy_helper.from_array(np.array(True), output + "_value"))


def leak_graph(name: str, tensor: TensorProto) -> GraphProto:
    """A subgraph whose one output is ``tensor`` (an If branch)."""
    return helper.make_graph([constant("leak", tensor)], name, [],
                             [helper.make_tensor_value_info("leak", TensorProto.UINT8, None)])


def lookalike(nodes: list, *, source: str = "raw", initializers=(), sparse=(), functions=(),
              props: dict[str, str] | None = None, extra_outputs=()) -> ModelProto:
    """Our inputs, output and metadata; the audio is the uint8 tensor ``source`` as (1, N)
    floats, so N bytes read from anywhere come back as N samples."""
    names = ("mel", "z", "lengths", "sigma")
    types = (TensorProto.FLOAT, TensorProto.FLOAT, TensorProto.INT64, TensorProto.FLOAT)
    shapes = (["b", N_MELS, "f"], ["b", 8, "t"], ["b"], [])
    inputs = [helper.make_tensor_value_info(n, t, s) for n, t, s in zip(names, types, shapes)]
    outputs = [helper.make_tensor_value_info("audio", TensorProto.FLOAT, None), *extra_outputs]
    shape = numpy_helper.from_array(np.array([1, -1], dtype=np.int64), "shape")
    nodes = [*nodes, helper.make_node("Cast", [source], ["as_float"], to=TensorProto.FLOAT),
             constant("shape", shape), helper.make_node("Reshape", ["as_float", "shape"],
                                                        ["audio"])]
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers),
                              sparse_initializer=list(sparse))
    model = helper.make_model(graph, functions=list(functions), opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("evil", 1)])
    model.ir_version = 8
    helper.set_model_props(model, props or waveglow_props())
    return model



def _function(body: list) -> ModelProto:
    leak = helper.make_function("evil", "Leak", [], ["leak"], body, [helper.make_opsetid("", 17)])
    return lookalike([helper.make_node("Leak", [], ["raw"], domain="evil")], functions=[leak])


def _if(then_branch: GraphProto, else_branch: GraphProto, output: str = "raw",
        cond: str = "cond") -> list:
    return [true(cond), helper.make_node("If", [cond], [output], then_branch=then_branch,
                                         else_branch=else_branch)]


def _loop() -> ModelProto:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), constant("leak", external("l"))],
        "body", [helper.make_tensor_value_info("i", TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond_in", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
         helper.make_tensor_value_info("leak", TensorProto.UINT8, None)])
    trip = numpy_helper.from_array(np.array(1, dtype=np.int64), "trip_value")
    return lookalike([constant("trip", trip), true("cond"),
                      helper.make_node("Loop", ["trip", "cond"], ["raw"], body=body)])


def _scan() -> ModelProto:
    body = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"]), constant("leak", external("s"))], "body",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, []),
         helper.make_tensor_value_info("leak", TensorProto.UINT8, None)])
    xs = numpy_helper.from_array(np.zeros(1, np.float32), "xs_value")
    return lookalike([constant("xs", xs), helper.make_node(
        "Scan", ["xs"], ["ys", "raw"], body=body, num_scan_inputs=1)])


def _sparse(values: TensorProto, indices: TensorProto, n: int = len(SECRET)
            ) -> SparseTensorProto:
    return helper.make_sparse_tensor(values, indices, [n])


def _all_indices(name: str) -> TensorProto:
    return numpy_helper.from_array(np.arange(len(SECRET), dtype=np.int64), name)


def _custom_attribute(value: object) -> ModelProto:
    """An otherwise inline lookalike with a node of another domain carrying ``value``."""
    node = helper.make_node("Anything", ["mel"], ["unused"], domain="evil")
    node.attribute.append(helper.make_attribute("hidden", value))
    inline = numpy_helper.from_array(np.zeros(len(SECRET), np.uint8), "c")
    return lookalike([constant("raw", inline), node])


def _training_info() -> ModelProto:
    model = lookalike([constant("raw", numpy_helper.from_array(np.zeros(4, np.uint8), "c"))])
    model.training_info.add().initialization.CopyFrom(leak_graph("init", external("t")))
    return model


#: Every place a tensor can hide in a model: name -> the model, its audio the secret's bytes.
HIDING_PLACES = {
    "initializer": lambda: lookalike([], initializers=[external("raw")]),
    "constant": lambda: lookalike([constant("raw", external("c"))]),
    "constant, external_data without the flag": lambda: lookalike(
        [constant("raw", external("c", flagged=False))]),
    "constant, onnxruntime's in-memory address": lambda: lookalike(
        [constant("raw", external("c", location="*/_ORT_MEM_ADDR_/*"))]),
    "constant, absolute path": lambda: lookalike(
        [constant("raw", external("c", location="/etc/passwd"))]),
    "model-local function": lambda: _function([constant("leak", external("f"))]),
    "if branch in a function": lambda: _function(
        _if(leak_graph("t", external("ft")), leak_graph("e", external("fe")), "leak")),
    "if branch": lambda: lookalike(_if(leak_graph("t", external("t")),
                                       leak_graph("e", external("e")))),
    "nested if": lambda: lookalike(_if(helper.make_graph(
        _if(leak_graph("t2", external("t2")), leak_graph("e2", external("e2")), "leak", "c2"),
        "outer",
        [], [helper.make_tensor_value_info("leak", TensorProto.UINT8, None)]),
        leak_graph("e", external("e")))),
    "loop body": _loop,
    "scan body": _scan,
    "sparse initializer values": lambda: lookalike([], sparse=[
        _sparse(external("raw"), _all_indices("raw_indices"))]),
    "sparse initializer indices": lambda: lookalike([], sparse=[_sparse(
        numpy_helper.from_array(np.ones(8, np.uint8), "raw"),
        external("raw_indices", 8, dtype=TensorProto.INT64))]),
    "constant sparse_value": lambda: lookalike([helper.make_node(
        "Constant", [], ["raw"], sparse_value=_sparse(external("v"), _all_indices("i")))]),
    "tensor attribute": lambda: _custom_attribute(external("h")),
    "tensors attribute": lambda: _custom_attribute([external("h1"), external("h2")]),
    "sparse tensor attribute": lambda: _custom_attribute(
        _sparse(external("hv"), _all_indices("hi"))),
    "sparse tensors attribute": lambda: _custom_attribute(
        [_sparse(external("hv"), _all_indices("hi"))]),
    "graphs attribute": lambda: _custom_attribute([leak_graph("g", external("g"))]),
    "training initialization graph": _training_info,
}
#: The places plain onnxruntime (given the path) does read, and hands back as audio.
LEAKS_THROUGH_ONNXRUNTIME = ("initializer", "constant", "model-local function",
                             "if branch in a function", "if branch", "nested if", "loop body",
                             "sparse initializer values", "constant sparse_value")
#: What waveglow 0.1 leaked (its walk missed functions and sparse_value): the command line runs.
LEAKED_BEFORE = ("model-local function", "constant sparse_value", "if branch in a function")


def write_scene(folder: Path, kind: str) -> Path:
    """The model of ``kind`` and the secret beside it."""
    (folder / "secret.bin").write_bytes(SECRET)
    path = folder / "model.onnx"
    path.write_bytes(HIDING_PLACES[kind]().SerializeToString())
    return path


def mel_file(folder: Path) -> Path:
    path = folder / "mel.npy"
    np.save(path, np.full((N_MELS, FRAMES), -4.0, dtype=np.float32))
    return path


def run_by_path(path: Path) -> bytes:
    """Plain onnxruntime on the file, as any other tool would: the audio as bytes."""
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return _audio_bytes(session)


def _audio_bytes(session) -> bytes:
    feeds = {"mel": np.zeros((1, N_MELS, FRAMES), np.float32),
             "z": np.zeros((1, 8, FRAMES * HOP // 8), np.float32),
             "lengths": np.array([FRAMES]), "sigma": np.array(1.0, np.float32)}
    (audio,) = session.run(["audio"], feeds)
    return bytes(np.clip(np.round(audio), 0, 255).astype(np.uint8).ravel())


def assert_one_line_about(error: CheckpointError, path: Path, words: str) -> None:
    message = str(error)
    assert message.startswith(f"{path}: ") and words in message, message
    assert "\n" not in message and SECRET[:16].hex() not in message


# ---------------------------------------------------------------------------------------------
# External data: nothing outside the file is ever read


@pytest.mark.parametrize("kind", list(HIDING_PLACES))
def test_every_hiding_place_is_refused_before_onnxruntime_reads_it(tmp_path, monkeypatch, kind):
    """Run from the model's own folder (the worst case: a path relative to the working folder
    names the secret too)."""
    path = write_scene(tmp_path, kind)
    monkeypatch.chdir(tmp_path)
    sessions = []
    monkeypatch.setattr(onnxruntime, "InferenceSession",
                        lambda *args, **kwargs: sessions.append(args))
    with pytest.raises(CheckpointError) as info:
        load_vocoder(str(path), "cpu", settings=offline(tmp_path))
    assert_one_line_about(info.value, path, "external files")
    assert sessions == []  # refused before onnxruntime saw the bytes


@pytest.mark.parametrize("kind", LEAKS_THROUGH_ONNXRUNTIME)
def test_the_hostile_files_do_read_the_secret_through_plain_onnxruntime(tmp_path, kind):
    """The control: these files are hostile (onnxruntime, given the path, returns the
    secret's bytes as the audio), so their refusal above is what protects it."""
    assert run_by_path(write_scene(tmp_path, kind)) == SECRET


@pytest.mark.parametrize("kind", LEAKED_BEFORE)
def test_the_command_line_refuses_in_one_line_and_nothing_carries_the_secret(tmp_path, kind):
    path = write_scene(tmp_path, kind)
    out = tmp_path / "out"
    r = run_cli("synth", mel_file(tmp_path), "-c", path, "-o", out, "--subtype", "FLOAT",
                "--seed", "0", cwd=tmp_path, env={"WAVEGLOW_HOME": str(tmp_path / "home")})
    lines = r.stderr.decode().strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr.decode()
    assert lines[0].startswith(f"error: {path}: ") and "external files" in lines[0]
    assert "Traceback" not in r.stderr.decode() and r.stdout == b""
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.name != "secret.bin"]
    assert not out.exists() and not any(SECRET[:64] in p.read_bytes() for p in written)


def test_onnxruntime_gets_the_checked_bytes_and_no_folder_to_read_beside_them(tmp_path,
                                                                               monkeypatch):
    """Defence in depth: with the tensor checks switched off, onnxruntime still reads nothing.
    It resolves external data of a model given as bytes against the working folder (the
    control below leaks), so the loader also points its external-data folder under the model
    file itself, where no file can be."""
    monkeypatch.setattr(onnx_engine, "check_model_tensors", lambda *args: None)
    monkeypatch.chdir(tmp_path)
    for kind in LEAKS_THROUGH_ONNXRUNTIME:
        path = write_scene(tmp_path, kind)
        session = onnxruntime.InferenceSession(path.read_bytes(),
                                               providers=["CPUExecutionProvider"])
        assert _audio_bytes(session) == SECRET, kind  # bytes alone are not enough
        with pytest.raises(CheckpointError) as info:
            load_vocoder(str(path), "cpu", settings=offline(tmp_path))
        assert_one_line_about(info.value, path, "onnxruntime refused it")


def test_a_self_contained_lookalike_loads_and_its_tensor_is_the_audio(tmp_path):
    """The same graph with the bytes inside the file passes every check and its tensor comes
    back as the audio: the channel the refused files would use is real, and the checks do not
    refuse self-contained files."""
    inline = numpy_helper.from_array(np.frombuffer(SECRET, np.uint8).copy(), "c")
    path = tmp_path / "inline.onnx"
    path.write_bytes(lookalike([constant("raw", inline)]).SerializeToString())
    vocoder = load_vocoder(str(path), "cpu", settings=offline(tmp_path))
    [(_, audio)] = list(vocoder.synthesizer().run(
        [("u", np.full((N_MELS, FRAMES), -4.0, np.float32))]))
    assert bytes(np.round(np.asarray(audio)).astype(np.uint8).ravel()) == SECRET


# ---------------------------------------------------------------------------------------------
# Memory by declaration


def _sparse_bomb(name: str) -> SparseTensorProto:
    values = numpy_helper.from_array(np.array([1.0], np.float32), name)
    indices = numpy_helper.from_array(np.array([BIG - 1], np.int64), name + "_indices")
    return helper.make_sparse_tensor(values, indices, [BIG])


def _bomb_model(nodes=(), initializers=(), sparse=()) -> ModelProto:
    """A self-contained lookalike with one more output, the bomb."""
    inline = numpy_helper.from_array(np.zeros(4, np.uint8), "c")
    return lookalike([constant("raw", inline), *nodes,
                      helper.make_node("Identity", ["bomb"], ["extra"])],
                     initializers=initializers, sparse=sparse,
                     extra_outputs=[helper.make_tensor_value_info("extra", TensorProto.FLOAT,
                                                                  None)])


def _declared_without_data(dims: list[int]) -> TensorProto:
    return TensorProto(name="bomb", data_type=TensorProto.FLOAT, dims=dims)


#: Tensors that declare far more than the file holds (the sparse one: 2^29 floats, 4.4 GB).
TENSOR_BOMBS = {
    "sparse initializer": (lambda: _bomb_model(sparse=[_sparse_bomb("bomb")]),
                           "more than its"),
    "constant sparse_value": (lambda: _bomb_model(nodes=[helper.make_node(
        "Constant", [], ["bomb"], sparse_value=_sparse_bomb("v"))]), "more than its"),
    "sparse attribute in a function": (lambda: _function([helper.make_node(
        "Constant", [], ["leak"], sparse_value=_sparse_bomb("v"))]), "more than its"),
    "initializer without its data": (lambda: _bomb_model(
        initializers=[_declared_without_data([BIG])]), "but stores 0 bytes"),
    "constant with less data than its shape": (lambda: _bomb_model(nodes=[constant(
        "bomb", TensorProto(name="v", data_type=TensorProto.FLOAT, dims=[1 << 20, 1 << 10],
                            float_data=[1.0]))]), "but stores 4 bytes"),
    "negative dimension": (lambda: _bomb_model(
        initializers=[_declared_without_data([-1, 4])]), "negative dimension"),
}


@pytest.mark.parametrize("kind", list(TENSOR_BOMBS))
def test_tensors_that_declare_more_than_the_file_holds_are_refused(tmp_path, kind):
    build, words = TENSOR_BOMBS[kind]
    path = tmp_path / "bomb.onnx"
    path.write_bytes(build().SerializeToString())
    assert path.stat().st_size < 4096
    with pytest.raises(CheckpointError) as info:
        load_vocoder(str(path), "cpu", settings=offline(tmp_path))
    assert_one_line_about(info.value, path, words)


def _config(**changes: int) -> dict:
    return {**WaveGlowConfig(**TINY).to_dict(), **changes}


#: waveglow.* metadata beyond sane limits (n_flows 10^9 ran 93 s to 5.3 GB; n_layers 2000 gave
#: "internal error (OverflowError)"), or beyond what the file's weights could be.
METADATA_BOMBS = {
    "n_flows": (waveglow_props(_config(n_flows=10**9)), "n_flows=1000000000"),
    "n_layers": (waveglow_props(_config(n_layers=2000)), "n_layers=2000"),
    "n_channels": (waveglow_props(_config(n_channels=1 << 40)), "n_channels="),
    "kernel_size": (waveglow_props(_config(kernel_size=10**9 + 1)), "kernel_size="),
    "receptive field": (waveglow_props(_config(n_layers=16, kernel_size=63)),
                        "frames of context"),
    "weights the file cannot hold": (waveglow_props(_config(n_channels=4096)),
                                     "bytes of weights"),
    "a float for a count": (waveglow_props(_config(n_flows=1e300)), "not a whole number"),
    "sample rate": (waveglow_props(**{"waveglow.sample_rate": str(10**12)}), "sample rate"),
    "mel n_fft": (waveglow_props(**{"waveglow.mel": json.dumps(
        {**MelConfig(n_mels=N_MELS).to_dict(), "n_fft": 1 << 40, "win_length": 1024})}),
        "implausible mel settings"),
}


@pytest.mark.parametrize("kind", list(METADATA_BOMBS))
def test_metadata_beyond_sane_limits_is_refused_in_one_line(tmp_path, kind):
    props, words = METADATA_BOMBS[kind]
    inline = numpy_helper.from_array(np.zeros(4, np.uint8), "c")
    path = tmp_path / "meta.onnx"
    path.write_bytes(lookalike([constant("raw", inline)], props=props).SerializeToString())
    with pytest.raises(CheckpointError) as info:
        load_vocoder(str(path), "cpu", settings=offline(tmp_path))
    assert_one_line_about(info.value, path, words)


def test_a_fixed_batch_beyond_the_limit_is_refused(tmp_path):
    """A graph whose mel input declares a fixed batch would have every pass padded to it."""
    model = lookalike([constant("raw", numpy_helper.from_array(np.zeros(4, np.uint8), "c"))])
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 10**9
    path = tmp_path / "batch.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(CheckpointError) as info:
        load_vocoder(str(path), "cpu", settings=offline(tmp_path))
    assert_one_line_about(info.value, path, "fixed batch of 1000000000")


PEAK_CHILD = """
import resource, sys
from waveglow_cli.errors import CheckpointError
from waveglow_cli.settings import Settings
from waveglow_cli.vocoder import load_vocoder
resource.setrlimit(resource.RLIMIT_AS, (6 << 30, 6 << 30))  # a failing check cannot take the box
try:
    load_vocoder(sys.argv[1], "cpu", settings=Settings.from_env({"WAVEGLOW_HOME": sys.argv[2]}))
    print("loaded")
except CheckpointError as e:
    print(str(e).replace(chr(10), " "))
# VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec, so a child forked from a large
# test process would report the parent's size.
status = open("/proc/self/status").read().split("VmHWM:")[1].split()
print(int(status[0]) * 1024)
"""


def test_the_bombs_are_refused_within_a_bounded_footprint(tmp_path):
    """Peak memory of a process refusing them, as a bound: the sparse initializer took
    4.4 GB, n_flows = 10^9 5.3 GB; the refusing process stays near what importing costs."""
    bombs = {"sparse.onnx": TENSOR_BOMBS["sparse initializer"][0](),
             "flows.onnx": lookalike([constant("raw", numpy_helper.from_array(
                 np.zeros(4, np.uint8), "c"))], props=METADATA_BOMBS["n_flows"][0])}
    for name, model in bombs.items():
        path = tmp_path / name
        path.write_bytes(model.SerializeToString())
        r = subprocess.run([sys.executable, "-c", PEAK_CHILD, str(path), str(tmp_path / "h")],
                           capture_output=True, timeout=300, env={**os.environ,
                                                                  "OMP_NUM_THREADS": "1"})
        message, peak = r.stdout.decode().strip().splitlines()[-2:]
        assert message.startswith(f"{path}: refused"), r.stdout + r.stderr
        assert int(peak) < 1 << 30, (name, int(peak))


# ---------------------------------------------------------------------------------------------
# The file itself


def test_a_fifo_and_a_file_over_2_gib_are_refused_without_reading(tmp_path):
    fifo = tmp_path / "pipe.onnx"
    os.mkfifo(fifo)
    outcome: list[BaseException] = []

    def load() -> None:
        try:
            load_vocoder(str(fifo), "cpu", settings=offline(tmp_path))
        except BaseException as e:  # noqa: BLE001 - recorded for the assertion
            outcome.append(e)

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    worker.join(60)
    assert not worker.is_alive(), "opening a FIFO with no writer hung"
    assert isinstance(outcome[0], CheckpointError)
    assert_one_line_about(outcome[0], fifo, "not a regular file")
    huge = tmp_path / "huge.onnx"
    with huge.open("wb") as f:
        f.truncate(MAX_ONNX_BYTES + 1)  # sparse: no disk used, and never read
    with pytest.raises(CheckpointError) as info:
        load_vocoder(str(huge), "cpu", settings=offline(tmp_path))
    assert_one_line_about(info.value, huge, "2 GiB")


def test_fields_this_onnx_does_not_know_are_refused(tmp_path):
    """onnxruntime may know a field the onnx package here does not (a place a tensor could
    hide that the walk cannot see): such a file is refused."""
    model = lookalike([constant("raw", numpy_helper.from_array(np.zeros(4, np.uint8), "c"))])
    path = tmp_path / "unknown.onnx"
    path.write_bytes(model.SerializeToString() + bytes([0x98, 0x06, 0x01]))  # field 99 = 1
    with pytest.raises(CheckpointError) as info:
        load_vocoder(str(path), "cpu", settings=offline(tmp_path))
    assert_one_line_about(info.value, path, "does not know")
