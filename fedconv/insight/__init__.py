"""What a federation shows about itself beyond accuracy and bytes.

:mod:`fedconv.insight.drift`: the geometry of the client updates of each round (their
norms, their cosines to the aggregate step and to each other, per layer) and the global
model's distance from its initialization, computed on the server from the replies it
already receives: nothing new travels.

Layer: above :mod:`fedconv.wire`, below :mod:`fedconv.runs` and :mod:`fedconv.federation`
(which calls it each round). :mod:`~fedconv.insight.drift` imports NumPy only; its functions
take plain ``name -> array`` mappings, so a notebook can call them on saved models too.

:mod:`fedconv.insight.views`: pictures of a trained model (the first layer's filters, each
block's feature maps, the confusion matrix); torch, and matplotlib when drawing;
``fedconv inspect`` draws them for a run.
"""
