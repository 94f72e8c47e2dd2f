"""Features: mel spectrograms and what feeds the model.

* :mod:`.mel`: NVIDIA's Tacotron 2 mel (``MelConfig``, STFT);
* :mod:`.conventions`, :mod:`.melconvert`: other toolkits' mel conventions and the
  conversion onto ours;
* :mod:`.melcheck`: the likely scale of an input mel;
* :mod:`.inputs`: one synthesis input (a mel file, or audio by copy synthesis) as a mel.
"""
