"""The evaluate stage: pure metrics over ±1 codes, and the per-run report rows.

Modules (imports stay lazy: numba compiles only when a ranking is first computed):

- ``hamming``       chunked XOR+popcount distances and exact stable top-k (numpy, numba or faiss)
- ``_kernels``      the numba kernels ``hamming`` and ``metrics`` call
- ``metrics``       mAP@K, mAP, P@K, precision within a radius, PR curves; stable or reference tie rule
- ``binary_index``  faiss binary indexes (flat, IVF, hash, multi-hash) and their parameter rules
- ``report``        evaluate a run's codes into report rows and curves, and write them to the run
- ``code_health``   distinct codes and constant bits: whether a run's codes can rank at all

The codes themselves (sign rule, packing, files) belong to the store (``pipeline.ground.store.codes``);
tables, figures and pages across runs to ``stages.present``.
"""
