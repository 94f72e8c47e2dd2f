"""``waveglow export``: a checkpoint as one ONNX file (mel, z, lengths, sigma -> audio), checked
against the torch engine with onnxruntime before it is written (:mod:`waveglow_cli.jobs.export`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..errors import OutputExistsError, OutputExistsHint
from .common import (
    DownloadBar,
    JsonOption,
    OfflineOption,
    OverwriteOption,
    QuietOption,
    StepStatus,
    check_checkpoint,
    errors_to_exit,
    load_settings,
    require_extra,
    stderr_console,
)

Checkpoint = Annotated[str, typer.Argument(metavar="CHECKPOINT",
                                           help="Checkpoint file or registry name.")]
Output = Annotated[str | None, typer.Option(
    "-o", "--output", help="The ONNX file to write. Default: <checkpoint stem>.onnx here.",
    show_default=False)]
Opset = Annotated[int, typer.Option(help="ONNX opset (13 to 20; 17 suits onnxruntime >= 1.14 "
                                         "and TensorRT >= 8.6).")]
Dtype = Annotated[str, typer.Option(
    "--dtype", help="fp32 (checked to 1e-4 against torch) or fp16 (computes in float16 behind "
                    "float32 inputs; checked to >= 30 dB SNR; half the size).")]
Batch = Annotated[str, typer.Option(
    help="dynamic, or a fixed batch size N (some runtimes want static shapes).")]


def export(
    checkpoint: Checkpoint,
    output: Output = None,
    opset: Opset = 17,
    dtype: Dtype = "fp32",
    batch: Batch = "dynamic",
    overwrite: OverwriteOption = False,
    offline: OfflineOption = False,
    quiet: QuietOption = False,
    as_json: JsonOption = False,
) -> None:
    """Export a checkpoint to ONNX: inputs mel, z (noise), lengths, sigma; output audio.

    Dynamic batch and frame axes; sample rate, mel settings and sha256 in the metadata.

    Checked with onnxruntime against the torch engine before it is written.

    `waveglow synth -c model.onnx` runs the file with onnxruntime."""
    import json

    settings = load_settings(offline)
    with errors_to_exit(settings):
        check_checkpoint(checkpoint, settings)
        # onnx writes the file and onnxruntime checks it: both missing is said at once, not
        # after torch, the model and the trace (as serve and synth -c x.onnx say theirs).
        require_extra("export", "onnx", ("onnx", "onnxruntime"))
        from ..jobs.export import ExportOptions, export_onnx

        options = ExportOptions(opset=opset, dtype=dtype, batch=ExportOptions.parse_batch(batch),
                                overwrite=overwrite)
        target = output if output is not None else f"{Path(checkpoint).stem or 'model'}.onnx"
        try:
            with StepStatus(quiet) as status:  # on a terminal: what runs, for tens of seconds
                result = export_onnx(checkpoint, target, options, settings=settings,
                                     progress=DownloadBar(quiet), status=status)
        except OutputExistsError as e:
            raise OutputExistsHint.of(e, ("--overwrite",)) from None
    if as_json:
        typer.echo(json.dumps(result.as_dict(), indent=2))
    elif not quiet:
        stderr_console().out(result.line())
