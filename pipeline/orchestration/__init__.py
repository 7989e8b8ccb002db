"""The use cases: each runs the stages in order for one command of the CLI.

- ``training``      train a method at some code lengths: features -> fit -> codes -> report -> run folder
- ``grid``          methods x bits x seeds, in worker processes, then the combined table
- ``searcher``      a trained run loaded for searching: encoders, model, codes, index, item table
- ``query``         encode a new image or text with a run and rank by Hamming distance
- ``serving``       ``cmh serve``: the search service and page over a loaded run (Starlette + uvicorn)
- ``encoding``      code another cached dataset with a run (``encoding_ray``: on Ray actors)
- ``indexing``      faiss binary indexes over a run's codes
- ``demo``          the whole job on the generated demo set
"""
