"""Make the speech corpus the shipped `demo` model is trained on.

The project cannot ship or download recordings, so it speaks its own: espeak-ng (Debian package
`espeak-ng`, GPL; its output is ours to use) reads sentences taken from the docstrings of
Python's standard library with many voices, variants, pitches and speeds. Every choice comes from
a seeded RNG, so the same espeak-ng and Python give the same corpus.

    python scripts/make_demo_corpus.py OUT_DIR [--train 480] [--held-out 40] [--seed 0]
        [--noise-floor-db -75:-50]

A seeded white-noise floor is added to every clip, its RMS drawn per clip from the range (in
dBFS; a single number fixes it). espeak-ng pauses are exact digital zeros, which no recording
has: on them a flow can raise its likelihood without limit by predicting zeros from the
neighbouring zeros in the audio, so the first demo model learned silence from the audio instead
of the mel. With a floor, and one whose level varies from clip to clip, only the mel tells the
model how loud the pauses are.
"""
from __future__ import annotations

import argparse
import importlib
import random
import re
import subprocess
import sys
from pathlib import Path

# Languages with an English-like sound inventory plus a few others for phonetic variety.
TRAIN_LANGUAGES = ["en", "en-us", "en-gb-scotland", "en-029", "en-gb-x-rp", "en-us-nyc", "de", "fr", "es"]
TRAIN_VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+f1", "+f2", "+f3", "+f4",
                  "+klatt", "+klatt2", "+Andy", "+Denis", "+Gene", "+john", "+linda", "+belinda", "+edward", "+grandma", "+max", "+david"]
HELD_OUT_VARIANTS = ["+f5", "+m7", "+klatt3", "+Annie"]
STDLIB_MODULES = ["argparse", "asyncio", "collections", "csv", "datetime", "decimal", "email",
                  "fractions", "functools", "heapq", "http.client", "inspect", "json", "logging",
                  "os", "pathlib", "pickle", "random", "re", "shutil", "socket", "statistics",
                  "string", "subprocess", "tarfile", "threading", "typing", "unittest", "urllib.request",
                  "zipfile", "textwrap", "calendar", "difflib", "sqlite3", "tempfile", "uuid"]


def stdlib_sentences() -> list[str]:
    """Plain prose sentences of 5-22 words from standard-library docstrings, deduplicated."""
    seen: set[str] = set()
    sentences: list[str] = []
    for name in STDLIB_MODULES:
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        docs = [module.__doc__ or ""]
        for attr in sorted(vars(module)):
            doc = getattr(getattr(module, attr, None), "__doc__", None)
            if isinstance(doc, str):
                docs.append(doc)
        for doc in docs:
            text = " ".join(doc.split())
            for sentence in re.split(r"(?<=[.!?])\s+", text):
                words = sentence.split()
                if not 5 <= len(words) <= 22 or not re.fullmatch(r"[A-Za-z][A-Za-z ,;'\-]+[.!?]", sentence):
                    continue
                key = sentence.lower()
                if key not in seen:
                    seen.add(key)
                    sentences.append(sentence)
    return sentences


def speak(text: str, voice: str, pitch: int, speed: int, path: Path) -> None:
    subprocess.run(["espeak-ng", "-v", voice, "-p", str(pitch), "-s", str(speed), "-w", str(path), text],
                   check=True, capture_output=True)


def noise_floor_range(text: str) -> tuple[float, float] | None:
    if text == "none":
        return None
    low, _, high = text.partition(":")
    return float(low), float(high or low)


def add_noise_floor(path: Path, levels_db: tuple[float, float], seed: tuple[int, ...]) -> float:
    """Add seeded white noise, RMS drawn uniformly from ``levels_db`` (dBFS), to a PCM16 wav
    file in place; returns the level used."""
    import numpy as np
    import soundfile

    rng = np.random.default_rng(list(seed))
    level_db = float(rng.uniform(min(levels_db), max(levels_db)))
    samples, rate = soundfile.read(path, dtype="float64")
    noise = rng.standard_normal(samples.shape) * 10.0 ** (level_db / 20)
    soundfile.write(path, np.clip(samples + noise, -1.0, 32767 / 32768), rate, subtype="PCM_16")
    return level_db


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    parser.add_argument("--train", type=int, default=480)
    parser.add_argument("--held-out", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--noise-floor-db", type=noise_floor_range, default=(-75.0, -50.0),
                        help="RMS of the added white noise in dBFS, LOW:HIGH (drawn per clip) "
                             "or one level; 'none' for no noise")
    args = parser.parse_args(argv)

    rng = random.Random(args.seed)
    sentences = stdlib_sentences()
    rng.shuffle(sentences)
    if len(sentences) < args.train + args.held_out:
        print(f"only {len(sentences)} sentences found", file=sys.stderr)
        return 1
    held_out_text, train_text = sentences[:args.held_out], sentences[args.held_out:args.held_out + args.train]
    rows = []
    for split, texts in (("train", train_text), ("held_out", held_out_text)):
        folder = args.out / split
        folder.mkdir(parents=True, exist_ok=True)
        for i, text in enumerate(texts):
            if split == "held_out":
                language = rng.choice(TRAIN_LANGUAGES[:6])
                variant = rng.choice(HELD_OUT_VARIANTS if i % 2 else TRAIN_VARIANTS)
            else:
                language = rng.choice(TRAIN_LANGUAGES)
                variant = rng.choice(TRAIN_VARIANTS)
            voice = language + variant
            pitch, speed = rng.randint(25, 75), rng.randint(130, 190)
            path = folder / f"{split}_{i:04d}.wav"
            speak(text, voice, pitch, speed, path)
            floor = "none"
            if args.noise_floor_db is not None:
                level = add_noise_floor(path, args.noise_floor_db, (args.seed, split == "train", i))
                floor = f"{level:.1f}"
            rows.append(f"{split}/{path.name}\t{voice}\t{pitch}\t{speed}\t{floor}\t{text}")
    (args.out / "manifest.tsv").write_text("file\tvoice\tpitch\tspeed\tnoise_floor_db\ttext\n" + "\n".join(rows) + "\n")
    print(f"{len(train_text)} train and {len(held_out_text)} held-out clips in {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
