"""What a federation shows about itself beyond accuracy and bytes.

:mod:`fedconv.insight.drift`: the geometry of the client updates of each round (their
norms, their cosines to the aggregate step and to each other, per layer) and the global
model's distance from its initialization, computed on the server from the replies it
already receives: nothing new travels.

Layer: above :mod:`fedconv.wire`, below :mod:`fedconv.runs` and :mod:`fedconv.federation`
(which calls it each round). It imports NumPy and the core layer only; its functions take
plain ``name -> array`` mappings, so a notebook can call them on saved models too.
"""
