"""From mels to audio with an engine.

* :mod:`.noise`: each item's noise from (seed, key), indexed by position;
* :mod:`.plans`: pieces with context margins and batches (files whole, streams ramped);
* :mod:`.synthesizer`: :class:`~.synthesizer.Synthesizer`, exact batched and chunked
  synthesis handing each item's audio on as it completes;
* :mod:`.denoiser`: NVIDIA's denoiser, whole or streamed.
"""
