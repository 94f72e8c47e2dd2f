"""Analysis: :mod:`.compare` (``waveglow compare``), :mod:`.quality` (SNR and friends),
:mod:`.plot` (``waveglow plot``) and :mod:`.bench` (``waveglow bench``).
"""
