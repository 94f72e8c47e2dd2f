"""Writing a synthesis job's audio: files (atomically, a block at a time) or a stream.

:class:`AudioWriter` is the :class:`~waveglow_cli.jobs.core.ItemWriter` of ``synth``; it runs on the
job's writer thread (:mod:`waveglow_cli.jobs.pipeline`), one item at a time."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol

from ..errors import StdoutClosed, SynthesisError, UsageError

if TYPE_CHECKING:
    import numpy as np

    from ..features.mel import MelConfig
    from ..synthesis.synthesizer import MelLike


class Named(Protocol):
    """What a writer needs of a job's item: the name it is reported by."""

    @property
    def display(self) -> str: ...


@dataclass
class AudioWriter:
    """Audio files (atomically, a block at a time) or, for target None, ``stdout``: WAV or raw
    PCM streamed block by block as the audio is made (flushed each time; the WAV header's
    length comes from the mel through ``samples_of``), FLAC whole at the end.  With ``plot``,
    also ``<stem>.png`` (input mel and output waveform) beside each file."""

    sample_rate: int
    subtype: str = "PCM_16"
    overwrite: bool = False
    stdout: IO[bytes] | None = None
    plot: MelConfig | None = None    # the mel settings to draw with; None: no figures
    notes: list[str] = field(default_factory=list)  # clipping notes, taken by the job
    stdout_format: str = "wav"       # wav, raw (streamed) or flac (whole)
    samples_of: Callable[[int], int] | None = None  # mel frames -> samples (None: no streaming)

    def __call__(self, item: Named, target: Path | None, mel: MelLike,
                 blocks: Iterator[np.ndarray]) -> int:
        import numpy as np

        from ..audio.out import ClipCount, write_audio_blocks

        clips = ClipCount()
        if target is None:
            samples = self._to_stdout(item, mel, blocks, clips)
            self._note_clipping(clips, f"{item.display} (standard output)")
            return samples
        kept: list[np.ndarray] = []
        if self.plot is not None:  # the figure shows the whole waveform
            blocks = (kept.append(b) or b for b in blocks)  # type: ignore[func-returns-value]
        samples = write_audio_blocks(target, blocks, self.sample_rate, self.subtype,
                                     name=item.display, overwrite=self.overwrite, clips=clips)
        self._note_clipping(clips, str(target))
        if self.plot is not None:
            from ..analysis.plot import plot_signals

            plot_signals(target.with_suffix(".png"),
                         [("mel", np.asarray(mel), f"{item.display}: mel"),
                          ("wave", np.concatenate(kept), f"{target.name}: synthesised")],
                         self.plot, overwrite=self.overwrite)
        return samples

    def _to_stdout(self, item: Named, mel: MelLike, blocks: Iterator[np.ndarray],
                   clips: Any) -> int:
        import numpy as np

        from ..audio.out import StreamEncoder, encode_audio, finalize_audio

        if self.stdout_format == "flac":
            parts = [finalize_audio(b, item.display, self.subtype, clips) for b in blocks]
            audio = np.concatenate(parts) if parts else np.zeros(0, np.float32)
            write_stream(self.stdout, encode_audio(audio, self.sample_rate, self.subtype, "FLAC"))
            return int(audio.size)
        if self.samples_of is None:  # the length is known only at the end: hold the audio
            held = list(blocks)
            blocks, expected = iter(held), sum(int(np.size(b)) for b in held)
        else:
            expected = self.samples_of(int(mel.shape[1]))
        encoder = StreamEncoder(self.stdout_format, self.sample_rate, self.subtype, expected)
        header, written = encoder.header(), 0
        for block in blocks:  # the header goes with the first block: a failure before it
            data = encoder.encode(block, item.display, clips)  # leaves standard output empty
            write_stream(self.stdout, header + data)
            header, written = b"", written + int(np.size(block))
        if written != expected:
            raise SynthesisError(item.display, f"{written} samples were made where the header "
                                               f"announced {expected}")
        write_stream(self.stdout, header + encoder.trailer())
        return written

    def _note_clipping(self, clips: Any, name: str) -> None:
        text = clips.note(name)  # None unless more than audio_out.CLIP_NOTE_FRACTION clipped
        if text is not None:
            self.notes.append(text)

    def take_notes(self) -> list[str]:
        """Notes about the items written since the last call (clipping), for the job."""
        taken, self.notes = self.notes, []
        return taken


def write_stream(stream: IO[bytes] | None, data: bytes) -> None:
    if stream is None:
        raise UsageError("standard output ('-o -') is not available to this job")
    view = memoryview(data)
    try:
        while view:  # a buffered write may return short (the reader left mid-write): go on
            written = stream.write(view)
            if written == 0:
                raise OSError(errno.EIO, "standard output accepts no more data")
            view = view[len(view) if written is None else written:]
        stream.flush()
    except BrokenPipeError:  # the reader is gone (`| head -c 100`): not this item's failure
        raise StdoutClosed from None
