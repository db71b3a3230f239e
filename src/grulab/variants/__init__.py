"""GRU variants as layers: minGRU, the layer-normalised GRU, zoneout and variational dropout.

Their step equations live in :mod:`grulab.cells` (``mingru.py``, ``lngru.py``, ``regularize.py``);
the modules here own parameters, options and the choice of engine, as :mod:`grulab.layers` does.
"""
