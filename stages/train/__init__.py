"""The train stage: hashing methods, the one training loop, and the one path from features to codes.

- ``base``        the method interface, its registry and factory, ``FeatureBatch`` and ``FeatureDims``
- ``methods/``    one module per method, reading like its paper's method section (with Deviations)
- ``layers``      building blocks the methods share (hash heads, MLPs, graph attention, fusion)
- ``losses``      loss terms the methods share, each defined once
- ``loop``        the gradient loop every deep method runs through (``fit_method``)
- ``validation``  validation scores while training: the only data any choice may read
- ``coding``      features -> ±1 codes with a trained method (training, encode, query, serve)
- ``checks``      request checks that need no data (bits, device, training length)
- ``projection``  closed-form projections (CCA, PCA, ITQ) the baselines use
"""
