"""Evaluation: ±1 codes -> packed words -> exact Hamming ranking -> metrics, reports, plots and tables.

Modules (imports stay lazy: numba compiles only when a ranking is first computed):

- ``codes``    binarize (sign(0)=+1), pack/unpack uint64 words, the codes Parquet of a run
- ``hamming``  chunked XOR+popcount distances and exact stable top-k (numpy, numba or faiss)
- ``metrics``  mAP@K, mAP, P@K, precision within a radius, PR curves; stable or reference tie rule
- ``report``   evaluate a run's codes, write ``report.parquet`` and ``curves.parquet``
- ``plots``    PR / P@K figures of a run; metric against bits across runs
- ``tables``   cross-run tables in the papers' layout (Markdown, Parquet, PNG)
- ``sql``      DuckDB SQL: Hamming top-k of a code against stored codes; cross-run queries
"""
