"""Jobs: many inputs to many outputs, as the commands run them.

* :mod:`.core`: discovering inputs, naming outputs, the synthesis job;
* :mod:`.mel_job`: the mel job;
* :mod:`.summary`: items, the overwrite policy, per-item results and the summary;
* :mod:`.pipeline`, :mod:`.writers`: the reading and writing threads, audio writers;
* :mod:`.export`: ``waveglow export`` (a checkpoint to a verified ONNX file).
"""
