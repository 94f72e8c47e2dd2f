"""Weights: finding, fetching and reading checkpoints.

* :mod:`.reader`: any published checkpoint format read safely (with :mod:`.torch_container`
  and the data-only unpickler :mod:`.safe_pickle`), and our safetensors format written;
* :mod:`.registry`: ``checkpoints.toml`` (+ ``WAVEGLOW_REGISTRY``): names, aliases, sources;
* :mod:`.cache`: a name or path to a local, verified file;
* :mod:`.download`, :mod:`.transfer`, :mod:`.gdrive`, :mod:`.lock`: sources and mirrors, one
  bounded resumable HTTP transfer, Google Drive's interstitial page, the per-checkpoint lock.
"""
