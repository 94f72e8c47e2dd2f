"""Package a `waveglow train` checkpoint as the bundled `demo` model.

    python scripts/package_demo.py RUN_DIR/step_NNNNNN.safetensors [--out src/waveglow_cli/models/demo.safetensors]

Stores the weights as float16 (half the size; read back as float32 by every loader) with the
training provenance in the safetensors metadata, then prints the size and sha256 that the
`[demo]` entry of checkpoints.toml must carry.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from waveglow_cli.checkpoints.download import sha256_file
from waveglow_cli.checkpoints.reader import read_checkpoint, save_checkpoint

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "waveglow_cli" / "models" / "demo.safetensors"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint", type=Path)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    source = read_checkpoint(args.checkpoint)
    run = json.loads((args.checkpoint.parent / "run.json").read_text())
    extra = {"name": "demo",
             "trained_with": "waveglow train (see docs/demo-model.md)",
             "training_step": source.metadata.get("step", "?"),
             "training_options": json.dumps(run.get("options", {}), sort_keys=True),
             "training_init_from": str(run.get("init_from") or "a fresh model"),
             "training_data": "scripts/make_demo_corpus.py: espeak-ng speech, 480 clips, 34 min",
             "storage": "float16 weights; computation is float32"}
    save_checkpoint(args.out, source, dtype=torch.float16, extra=extra)
    print(f"wrote {args.out}: {args.out.stat().st_size} bytes, sha256 {sha256_file(args.out)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
