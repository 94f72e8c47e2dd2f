"""Audio files: :mod:`.io` reads mels and audio (bounded, lazy, refusing devices and
absurd headers); :mod:`.out` encodes audio (NaN refused, PCM clipped, WAV/raw streamed a
block at a time, the same bytes for files and streams).
"""
