"""The model: :class:`WaveGlowConfig` (the architecture and its facts), :class:`WaveGlow`
(inference and the training direction), the one reverse-flow skeleton and the loss
(:mod:`.waveglow`).  Tensors in, tensors out: no files, no devices policy.
"""
