"""The checkpoint commands: ``info`` and ``convert`` (any checkpoint), and the cache's
``fetch``, ``list`` and ``rm`` (registry names)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ..errors import OutputExistsError, OutputExistsHint, UsageError, WaveGlowError
from .common import (
    EXIT_INPUT_FAILED,
    EXIT_OK,
    DownloadBar,
    JsonOption,
    OfflineOption,
    errors_to_exit,
    load_settings,
    report,
    stderr_console,
)

if TYPE_CHECKING:
    from ..checkpoints.registry import RegistryEntry
    from ..settings import Settings

CheckpointArgument = Annotated[str, typer.Argument(metavar="CHECKPOINT",
                                                   help="Checkpoint file or registry name.")]


def info(checkpoint: CheckpointArgument, as_json: JsonOption = False,
         offline: OfflineOption = False) -> None:
    """Describe a checkpoint: architecture, parameters, sample rate, mel, format, sha256.

    A registry name not yet cached is downloaded first (unless offline)."""
    import json

    settings = load_settings(offline)
    with errors_to_exit(settings):
        data = describe_checkpoint(checkpoint, settings)
    if as_json:
        typer.echo(json.dumps(data, indent=2))
        return
    if data["name"] is not None:
        typer.echo(f"name:         {data['name']}")
    if data["description"]:
        typer.echo(f"description:  {data['description']}")
    typer.echo(f"file:         {data['path']}")
    if data["onnx"] is not None:
        _echo_onnx(data)
    else:
        typer.echo(f"format:       {data['format']}"
                   + (f" (converted from {data['original_format']})" if data["original_format"]
                      else ""))
    if data["sha256"]:
        original = Path(data["sha256_of"])
        typer.echo(f"sha256:       {data['sha256']}"
                   + (f" ({original.name})" if original != Path(data["path"]) else "")
                   + (" (matches the pinned sha256)" if data["bundled"]
                      and data["sha256_published"] else ""))
    if data["bundled"]:
        typer.echo(f"size:         {data['size']:,} bytes (ships with the package; no cache, "
                   "no download)")
    elif data["name"] is not None:
        typer.echo(f"cache:        {data['cache_dir']}")
    if data["parameters"] is not None:
        typer.echo(f"parameters:   {data['parameters']:,}")
    typer.echo(f"sample rate:  {data['sample_rate']}")
    for key, value in data["architecture"].items():
        if key == "n_early_size" and not data["early_outputs"]:
            value = "no early outputs"  # a size of 0 (or 2 never used) reads like a setting
        typer.echo(f"{key + ':':<13} {value}")
    typer.echo("mel:          " + ", ".join(f"{k}={v}" for k, v in data["mel"].items()))


def _echo_onnx(data: dict[str, Any]) -> None:
    """The lines only an ONNX export has: how it was exported and checked."""
    onnx = data["onnx"]
    typer.echo(f"format:       ONNX export (waveglow export, opset {onnx['opset']}"
               + (f", from a {data['original_format']} checkpoint" if data["original_format"]
                  else "") + ")")
    computes = " (computes in float16 behind float32 inputs)" if onnx["precision"] == "fp16" \
        else ""
    typer.echo(f"precision:    {onnx['precision']}{computes}; batch {onnx['batch']}")
    if onnx["source_sha256"]:
        typer.echo(f"source:       {onnx['source'] or 'checkpoint'}, sha256 "
                   f"{onnx['source_sha256']}")
    if onnx["exported_by"]:
        typer.echo(f"exported by:  {onnx['exported_by']}")
    if onnx["verified"]:
        typer.echo(f"verified:     at export, onnxruntime against the torch engine: "
                   f"{onnx['verified']}")
    typer.echo(f"size:         {data['size']:,} bytes")


def describe_checkpoint(spec: str, settings: Settings) -> dict[str, Any]:
    """What ``info`` prints: where the file is, what it holds, its hash and provenance.  A
    bundled checkpoint (shipped with the package) is hashed and checked against its pinned
    sha256; it has no cache folder."""
    from ..checkpoints.cache import (
        cache_paths,
        ensure_checkpoint,
        fetch_checkpoint,
        read_record,
        reword_way_forward,
    )
    from ..checkpoints.download import sha256_file
    from ..checkpoints.reader import read_checkpoint
    from ..checkpoints.registry import Registry
    from ..engines.onnx import is_onnx_file
    from ..vocoder import mel_config_for

    registry = Registry.load(settings)
    entry = None if Path(spec).expanduser().exists() else registry.find(spec)
    if entry is not None and entry.bundled is not None:
        return _describe_bundled(entry, fetch_checkpoint(entry, settings))
    try:
        path = ensure_checkpoint(spec, settings, DownloadBar(), registry)
    except WaveGlowError as e:
        raise reword_way_forward(e, "argument") from None
    if is_onnx_file(path):
        return _describe_onnx(path)
    ckpt = read_checkpoint(path)
    meta, record_problem = read_record(entry, settings) if entry is not None else ({}, "")
    # The bytes are hashed below instead; a damaged record is a note.
    if record_problem and entry is not None:
        stderr_console().out(f"note: {entry.name}: {record_problem}; `waveglow fetch --verify "
                             f"{entry.name}` repairs it")
    original = cache_paths(entry, settings).original if entry is not None else path
    sha256 = meta.get("sha256") or (sha256_file(original) if original.is_file() else None)
    return {
        "name": entry.name if entry is not None else None,
        "path": str(path),
        "format": ckpt.source_format,
        "original_format": meta.get("format"),
        "sha256": sha256,
        "sha256_of": str(original),
        "sha256_published": bool(entry is not None and entry.sha256),
        "size": original.stat().st_size if original.is_file() else meta.get("size"),
        "cache_dir": str(cache_paths(entry, settings).folder) if entry is not None else None,
        "bundled": False,
        "source_url": meta.get("url"),
        "downloaded_at": meta.get("downloaded_at"),
        **_contents(ckpt, mel_config_for(ckpt, entry).to_dict(), entry),
    }


def _contents(ckpt: Any, mel: dict[str, Any], entry: RegistryEntry | None) -> dict[str, Any]:
    return {"parameters": sum(t.numel() for t in ckpt.state_dict.values()),
            **_model(ckpt.config, ckpt.sample_rate, mel),
            "description": entry.description if entry is not None else "", "onnx": None}


def _model(config: Any, sample_rate: int, mel: dict[str, Any]) -> dict[str, Any]:
    # early_outputs: how many flows split channels off (0 makes n_early_size moot)
    return {"sample_rate": sample_rate, "architecture": config.to_dict(),
            "early_outputs": config.n_early_outputs(), "mel": mel}


def _describe_onnx(path: Path) -> dict[str, Any]:
    """``info`` of a ``waveglow export`` file: what its metadata declares (read and checked as
    for running it, without onnxruntime), the file's own sha256 and its source's."""
    from ..checkpoints.download import sha256_file
    from ..engines.onnx import META_DTYPE, META_PREFIX, META_SOURCE_SHA256, read_onnx_file_info

    described = read_onnx_file_info(path)
    meta = described.metadata
    exporter = ", ".join(f"{what} {meta[META_PREFIX + key]}" for what, key in
                         (("waveglow", "version"), ("torch", "torch"))
                         if META_PREFIX + key in meta)
    return {
        "name": None, "path": str(path), "format": "onnx",
        "original_format": meta.get(META_PREFIX + "source_format"),
        "sha256": sha256_file(path), "sha256_of": str(path), "sha256_published": False,
        "size": path.stat().st_size, "cache_dir": None, "bundled": False, "source_url": None,
        "downloaded_at": None, "parameters": None, "description": "",
        **_model(described.config, described.sample_rate, described.mel),
        "onnx": {"opset": meta.get(META_PREFIX + "opset"),
                 "precision": meta.get(META_DTYPE, "fp32"),
                 "batch": described.batch or "dynamic",
                 "source": meta.get(META_PREFIX + "source"),
                 "source_sha256": meta.get(META_SOURCE_SHA256),
                 "exported_by": exporter or None,
                 "verified": meta.get(META_PREFIX + "verified")},
    }


def _describe_bundled(entry: RegistryEntry, result: Any) -> dict[str, Any]:
    """``info`` of a checkpoint shipped with the package: the packaged file, its sha256 (checked
    against the registry's pin by ``fetch_checkpoint``, which raises on a mismatch), its size."""
    from ..checkpoints.reader import read_checkpoint
    from ..vocoder import mel_config_for

    ckpt = read_checkpoint(result.path)
    return {
        "name": entry.name, "path": str(result.path), "format": ckpt.source_format,
        "original_format": None, "sha256": result.sha256, "sha256_of": str(result.path),
        "sha256_published": result.published_sha256,
        "size": result.path.stat().st_size, "cache_dir": None, "bundled": True,
        "source_url": None, "downloaded_at": None,
        **_contents(ckpt, mel_config_for(ckpt, entry).to_dict(), entry),
    }


def convert(
    checkpoint: CheckpointArgument,
    output: Annotated[Path, typer.Argument(metavar="OUTPUT", help="Output .safetensors file.")],
    overwrite: Annotated[bool, typer.Option(help="Replace an existing output.",
                                            show_default=False)] = False,
    dtype: Annotated[str, typer.Option(
        "--dtype", help="Storage type: fp32, or fp16 (half the size; weights rounded once, "
                        "computation unchanged).")] = "fp32",
    offline: OfflineOption = False,
) -> None:
    """Convert any supported checkpoint to the safe, fast-loading safetensors format."""
    import torch

    from ..checkpoints.cache import ensure_checkpoint, reword_way_forward
    from ..checkpoints.reader import read_checkpoint, save_checkpoint

    settings = load_settings(offline)
    with errors_to_exit(settings):
        if output.suffix != ".safetensors":
            raise UsageError(f"{output}: the output must end in .safetensors")
        storage = {"fp32": torch.float32, "fp16": torch.float16}.get(dtype)
        if storage is None:
            raise UsageError(f"--dtype {dtype!r}: use fp32 or fp16")
        try:
            source = ensure_checkpoint(checkpoint, settings, DownloadBar())
        except WaveGlowError as e:
            raise reword_way_forward(e, "argument") from None
        if output.exists() and output.resolve() == source.resolve():
            raise UsageError(f"{output}: refusing to overwrite the input")
        try:  # convert has --overwrite, no --skip-existing: the hint names only the former
            if output.exists() and not overwrite:
                raise OutputExistsError(output)
            save_checkpoint(output, read_checkpoint(source), dtype=storage, overwrite=overwrite)
        except OutputExistsError as e:
            raise OutputExistsHint.of(e, ("--overwrite",)) from None
    stderr_console().out(f"wrote {output}")


# ---------------------------------------------------------------------------------------------
# The checkpoint cache: fetch / list / rm


def _registry_entries(names: list[str], settings: Settings) -> list[RegistryEntry]:
    """The registry entries ``names`` name (names or aliases), each once, or a usage error."""
    from ..checkpoints.registry import Registry, unknown_checkpoint_error

    registry = Registry.load(settings)
    entries: list[RegistryEntry] = []
    for name in names:
        entry = registry.find(name)
        if entry is None:
            if Path(name).expanduser().is_file():
                raise UsageError(f"{name}: a file, not a registry name (this command takes "
                                 "registry names; see `waveglow list`)")
            raise unknown_checkpoint_error(name, registry)
        if entry not in entries:
            entries.append(entry)
    return entries


def _human_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def fetch(
    names: Annotated[list[str], typer.Argument(
        metavar="NAME", help="Registry names or aliases (see `waveglow list`).",
        show_default=False)],
    force: Annotated[bool, typer.Option(help="Download again even if cached.",
                                        show_default=False)] = False,
    verify: Annotated[bool, typer.Option(
        help="Re-hash the cached file against the published (else recorded) sha256 and "
             "download it again if it differs.", show_default=False)] = False,
    offline: OfflineOption = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or notes.")
                     ] = False,
) -> None:
    """Download checkpoints into the cache (verified, resumable, locked).

    A cached checkpoint needs no network at all. Prints each one's cached path on stdout."""
    from ..checkpoints.cache import fetch_checkpoint, reword_way_forward

    settings = load_settings(offline)
    with errors_to_exit(settings, os_errors=False):
        if force and verify:
            raise UsageError("--force and --verify exclude each other")
        if settings.problems and not settings.offline:  # e.g. WAVEGLOW_MAX_DOWNLOAD_BYTES=lots
            raise UsageError("; ".join(settings.problems))
        entries = _registry_entries(names, settings)
    failures = 0
    for entry in entries:
        bar = DownloadBar(quiet)
        try:
            result = fetch_checkpoint(entry, settings, force=force, verify=verify, progress=bar)
        except (WaveGlowError, OSError) as e:
            bar.finish()
            failures += 1
            report(reword_way_forward(e, "fetch"), settings, bar.console)
            continue
        bar.finish()
        if result.action == "cached":
            bar.note(f"{entry.name}: already cached (sha256 {result.sha256 or 'not recorded'})")
        elif result.action == "verified":
            bar.note(f"{entry.name}: verified (sha256 {result.sha256})")
        elif result.action == "bundled":
            bar.note(f"{entry.name}: ships with the package, nothing to download "
                     f"(sha256 {result.sha256}{' verified' if result.published_sha256 else ''})")
        typer.echo(str(result.path))
    raise typer.Exit(EXIT_INPUT_FAILED if failures else EXIT_OK)


def list_checkpoints(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")
                       ] = False,
) -> None:
    """List the registry's checkpoints and whether each is cached (no network)."""
    import json

    from ..checkpoints.cache import describe_cached
    from ..checkpoints.registry import Registry

    settings = load_settings()
    with errors_to_exit(settings):
        rows = [describe_cached(entry, settings)
                for entry in Registry.load(settings).entries.values()]
    for row in rows:  # a damaged cache record is a note, never a failure of `list`
        if row.get("record_problem"):
            stderr_console().out(f"note: {row['name']}: {row['record_problem']}; "
                                 f"`waveglow fetch --verify {row['name']}` repairs it")
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Names, sizes and states never wrap; the description column takes what is left and wraps
    # between words (aliases below it, comma-separated, so no name is cut mid-word at 80
    # columns; one longer than the whole column is the only thing folded).
    table = Table(show_lines=False)
    for column in ("name", "size", "cached"):
        table.add_column(column, no_wrap=True)
    table.add_column("description (aliases)", overflow="fold", ratio=1, min_width=24)
    for row in rows:
        first_sentence = row["description"].split(". ")[0].rstrip(".")
        aliases = [a for a in row["aliases"] if a.removesuffix(".pt") == a
                   or a.removesuffix(".pt") not in row["aliases"]]   # x.pt beside x: shown once
        aliases = [a for a in aliases if a.removesuffix(".pth") == a
                   or a.removesuffix(".pth") not in aliases]
        cached = "bundled" if row.get("bundled") else "yes" if row["cached"] else "no"
        text = Text(first_sentence)
        if aliases:
            text.append("\naliases: " + ", ".join(aliases), style="dim")
        table.add_row(row["name"], _human_size(row["size"]), cached, text)
    Console(highlight=False).print(table)


def rm(
    names: Annotated[list[str], typer.Argument(
        metavar="NAME", help="Registry names or aliases to remove from the cache.",
        show_default=False)],
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No notes.")] = False,
) -> None:
    """Remove checkpoints from the cache (the next use downloads them again)."""
    from ..checkpoints.cache import remove_checkpoint
    from ..checkpoints.registry import Registry, unknown_checkpoint_error

    settings = load_settings()
    console = stderr_console()
    with errors_to_exit(settings):
        registry = Registry.load(settings)
        targets = []
        for name in names:
            entry = registry.find(name)
            if entry is not None:
                targets.append(entry.name)
            elif "/" not in name and "\\" not in name and name not in (".", "..") \
                    and (settings.checkpoint_dir / name).is_dir():
                targets.append(name)  # cached from a registry file no longer in use
            else:
                raise unknown_checkpoint_error(name, registry)
        for name in dict.fromkeys(targets):
            entry = registry.find(name)
            if entry is not None and entry.bundled is not None:
                if not quiet:
                    console.out(f"note: {name}: ships with the package; nothing to remove")
                continue
            removed = remove_checkpoint(name, settings)
            if not quiet:
                console.out(f"removed {removed}" if removed else f"note: {name}: not cached")
