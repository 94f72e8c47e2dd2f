"""``waveglow compare REFERENCE GENERATED``: how close generated audio is to its reference, per
file and overall (:mod:`waveglow_cli.analysis.compare`).

Text: one tab-separated row per file, then a summary line, on standard output.  ``--json``: one
JSON object ``{"reference", "generated", "files": [row, ...], "summary": {...}, "missing":
[...]}``; each row has ``key, reference, generated, seconds, length_diff_s,
log_mel_distance, mcd_db, f0_rmse_hz, voicing_error, loudness_diff_db, pitch_frames,
reference_voiced_frames, generated_voiced_frames`` (the last three null with ``--no-f0``; a
null F0 RMSE's reason is in the text row) and the summary ``files`` and the mean of each metric
plus ``worst_log_mel_distance`` (null where undefined).
Every number is finite: a pair whose metrics would not be (1e30 float samples) fails with one
line naming the file, and the JSON stays strict JSON.
Exit 0 when every file was compared, 1 when one failed or had no counterpart, 2 for usage.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from .common import (
    EXIT_INPUT_FAILED,
    EXIT_OK,
    JsonOption,
    errors_to_exit,
    load_settings,
    report,
    stderr_console,
)

if TYPE_CHECKING:
    from ..analysis.compare import PairResult
    from ..features.mel import MelConfig


def compare(
    reference: Annotated[str, typer.Argument(
        metavar="REFERENCE", help="Reference audio file, or a folder of them.",
        show_default=False)],
    generated: Annotated[str, typer.Argument(
        metavar="GENERATED", help="Generated audio file, or a folder matched to the reference "
                                  "folder by relative path (any audio suffix).",
        show_default=False)],
    as_json: JsonOption = False,
    plot: Annotated[str | None, typer.Option(
        "--plot", help="Also write side-by-side mel spectrograms, one <key>.png per pair, "
                       "into this folder (needs matplotlib: the plot extra).",
        show_default=False)] = None,
    f0: Annotated[bool, typer.Option(
        "--f0/--no-f0", help="Pitch metrics (pyin: the slow part).")] = True,
) -> None:
    """Compare generated audio with its reference.

    Per file and overall: log-mel distance, mel-cepstral distortion, F0 RMSE, voicing error
    and loudness difference."""
    import json

    from ..analysis.compare import compare_files, pair_inputs, summarise
    from ..errors import AudioFileError, WaveGlowError
    from ..features.mel import MelConfig

    settings = load_settings()
    with errors_to_exit(settings, os_errors=False):
        pairs, missing = pair_inputs(reference, generated)
        if plot is not None:
            from ..analysis.plot import require_matplotlib

            require_matplotlib()
    console = stderr_console()
    for path in missing:
        report(AudioFileError(path, f"no generated file of that name under {generated}"),
               settings, console)
    config, rows, failures = MelConfig(), [], len(missing)
    for key, ref_path, gen_path in pairs:
        try:
            row = compare_files(key, ref_path, gen_path, config, f0=f0)
            if plot is not None:
                _plot_pair(Path(plot), row, config)
        except (WaveGlowError, OSError, ValueError) as e:
            failures += 1
            report(e, settings, console)
            continue
        rows.append(row)
        if not as_json:
            typer.echo(_row_text(row))
    summary = summarise(rows)
    if as_json:
        # Strict JSON: every row's metrics are finite (a pair with a non-finite one failed
        # above), so no bare NaN/Infinity can be printed; allow_nan=False makes sure of it.
        typer.echo(json.dumps({"reference": reference, "generated": generated,
                               "files": [r.as_dict() for r in rows], "summary": summary,
                               "missing": missing}, allow_nan=False))
    else:
        typer.echo(_summary_text(summary, failures, f0))
    raise typer.Exit(EXIT_INPUT_FAILED if failures else EXIT_OK)


def _number(value: float | None, unit: str, fmt: str = ".3f") -> str:
    return "n/a" if value is None else f"{value:{fmt}}{unit}"


def _row_text(r: PairResult) -> str:
    from ..errors import printable

    reason = r.f0_missing_reason()
    return (f"{printable(r.key)}\tlog-mel {_number(r.log_mel_distance, ' nats')}\t"
            f"MCD {_number(r.mcd_db, ' dB', '.2f')}\t"
            f"F0 RMSE {_number(r.f0_rmse_hz, ' Hz', '.1f')}"
            f"{f' ({reason})' if reason else ''}\t"
            f"voicing error {_number(r.voicing_error, '', '.1%')}\t"
            f"loudness {_number(r.loudness_diff_db, ' dB', '+.2f')}")


def _summary_text(summary: dict[str, float | int | None], failures: int, f0: bool) -> str:
    def metric(key: str, unit: str, fmt: str = ".3f") -> str:
        value = summary[key]
        return _number(None if value is None else float(value), unit, fmt)

    f0_reason = ("" if summary["f0_rmse_hz"] is not None or not summary["files"]
                 else " (no file has a frame voiced in both)" if f0
                 else " (pitch not measured)")
    return (f"{summary['files']} compared, {failures} failed: mean log-mel "
            f"{metric('log_mel_distance', ' nats')} (worst "
            f"{metric('worst_log_mel_distance', ' nats')}), MCD {metric('mcd_db', ' dB', '.2f')}, "
            f"F0 RMSE {metric('f0_rmse_hz', ' Hz', '.1f')}{f0_reason}, voicing error "
            f"{metric('voicing_error', '', '.1%')}, loudness "
            f"{metric('loudness_diff_db', ' dB', '+.2f')}")


def _plot_pair(folder: Path, row: PairResult, config: MelConfig) -> None:
    """Reference and generated mels, one above the other, in ``folder/<key>.png``."""
    from ..analysis.plot import plot_signals
    from ..features.inputs import audio_to_mel

    panels = []
    for label, path in (("reference", row.reference), ("generated", row.generated)):
        mel, _ = audio_to_mel(path, config)
        panels.append(("mel", mel, f"{label}: {Path(path).name}"))
    target = folder / Path(row.key).with_suffix(".png")
    target.parent.mkdir(parents=True, exist_ok=True)
    plot_signals(target, panels, config, overwrite=True)
