"""``waveglow serve``: an HTTP server over one loaded vocoder (the ``serve`` extra:
starlette, uvicorn, prometheus-client).

:func:`~.app.create_app` builds the ASGI app (:mod:`.app`), :mod:`.batcher` is the one worker
thread that owns the model and batches requests, :mod:`.protocol` parses and checks what a
client sends (:mod:`.body` reads it as it arrives within a memory budget, :mod:`.jsonmel`
parses a JSON mel incrementally, :mod:`.refusals` are the ways it is refused), :mod:`.stream`
sends the audio as it is made, :mod:`.metrics` counts, and :mod:`.server` runs it all on
uvicorn, with :mod:`.connections` bounding connections and their timeouts.

Nothing is imported here, so that the command can bind its port (:mod:`.server`, no torch)
before the model and torch are loaded: a port in use fails in a fraction of a second.
"""
