"""Engines: the implementations of WaveGlow inference behind one protocol.

* :mod:`.base`: the :class:`~.base.Engine` protocol and the eager model as an engine;
* :mod:`.select`: which engine a checkpoint gets for a device and precision, chosen once;
* :mod:`.devices`: ``--device`` and ``--precision`` (what ``auto`` means where);
* :mod:`.packed`: the CPU fast path (rows of matrix products, fp32 or bf16);
* :mod:`.gpu`: packed rows for a GPU, optionally ``torch.compile``d;
* :mod:`.onnx`, :mod:`.onnx_check`: an exported file run by onnxruntime, checked first.
"""
