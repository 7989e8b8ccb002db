"""Binary codes: ±1 binarisation, packing into 64-bit words, and the codes Parquet files of a run.

Conventions (recorded in every codes file's metadata, see ``CODE_CONVENTIONS``):

* **sign rule** ``sign(0) = +1``: ``torch.sign``/``np.sign`` map 0 to 0, a third code value that the
  published loops then treat as "half a bit" in ``0.5 * (k - b_q·b_r)``. Here every real value
  ``x >= 0`` becomes ``+1`` and ``x < 0`` becomes ``-1``.
* **bit order**: code bit ``j`` (``+1`` -> 1, ``-1`` -> 0) is bit ``j mod 64`` of word ``j // 64``, i.e.
  ``np.packbits(..., bitorder="little")`` viewed as little-endian ``uint64``. Codes are zero-padded
  to a multiple of 64 bits; padding bits are 0 in every code, so they never add to a Hamming distance.

A run stores ``<run_dir>/codes/split=<split>/part-00000.parquet`` with ``item_id int64`` and
``image_code`` / ``text_code`` as ``FixedSizeList<uint64>[W]``, ``W = ceil(bits / 64)``. DuckDB reads
those columns as ``UBIGINT[W]`` arrays, so ``bit_count(xor(image_code[1], $q::UBIGINT))`` works in SQL
(see ``stages.present.sql``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import pyarrow as pa

from pipeline.ground.errors import CacheError, DataError
from pipeline.ground.store.parquet import (id_column_problem, read_metadata, read_table, vector_column_problem,
                                           write_table_atomic)

_RETRAIN = "train the run again with `cmh train ... --force`"

#: Written into each codes file's metadata and each run report.
SIGN_RULE = "sign(0)=+1: x >= 0 -> +1, x < 0 -> -1"
BIT_ORDER = "bit j -> bit (j mod 64) of uint64 word j//64 (np.packbits bitorder='little', '<u8'); zero-padded"
CODE_CONVENTIONS = {"sign_rule": SIGN_RULE, "bit_order": BIT_ORDER}

CODE_COLUMNS = {"image": "image_code", "text": "text_code"}


def n_words(bits: int) -> int:
    """Number of uint64 words for a code of ``bits`` bits."""
    if int(bits) < 1:
        raise DataError(f"code length must be >= 1 bit, got bits={bits}")
    return (int(bits) + 63) // 64


def binarize(x: "np.ndarray | Any") -> np.ndarray:
    """Relaxed codes ``(n, k)`` (numpy array or torch tensor) -> ``int8`` ±1 codes ``(n, k)``.

    ``sign(0) = +1`` (see the module docstring). Non-finite values are refused: a NaN has no sign and
    would silently become one of the two codes.
    """
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch here
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise DataError(f"binarize expects relaxed codes of shape (n, bits), got shape {x.shape}")
    if x.dtype.kind == "f" and not np.isfinite(x).all():
        bad = int((~np.isfinite(x)).sum())
        raise DataError(f"binarize: {bad} non-finite values in the relaxed codes; the model diverged or was not trained")
    return np.where(x >= 0, np.int8(1), np.int8(-1))


def check_codes(codes: np.ndarray, what: str = "codes") -> np.ndarray:
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise DataError(f"{what}: expected ±1 codes of shape (n, bits), got shape {codes.shape}")
    if codes.size and not ((codes == 1) | (codes == -1)).all():
        values = np.unique(codes)[:5]
        raise DataError(f"{what}: expected values in {{-1, +1}}, found e.g. {values.tolist()}; "
                        "binarize relaxed codes with pipeline.ground.store.codes.binarize first")
    return codes


def pack_codes(codes: np.ndarray) -> np.ndarray:
    """±1 codes ``(n, k)`` -> packed ``uint64`` words ``(n, ceil(k/64))`` (bit order in the module docstring)."""
    codes = check_codes(codes)
    n, bits = codes.shape
    width = n_words(bits)
    if bits == width * 64:
        on = codes > 0  # (n, 64 W) bool
    else:
        on = np.zeros((n, width * 64), dtype=bool)  # (n, 64 W), zero padding beyond `bits`
        on[:, :bits] = codes > 0
    packed = np.packbits(on, axis=1, bitorder="little")  # (n, 8 W) bytes
    return np.ascontiguousarray(packed).view("<u8").astype(np.uint64, copy=False)  # (n, W)


def unpack_codes(words: np.ndarray, bits: int) -> np.ndarray:
    """Packed words ``(n, W)`` -> ``int8`` ±1 codes ``(n, bits)``; the inverse of :func:`pack_codes`."""
    words = np.asarray(words)
    if words.ndim != 2 or words.shape[1] != n_words(bits):
        raise DataError(f"unpack_codes: {bits} bits need shape (n, {n_words(bits)}), got {words.shape}")
    as_bytes = np.ascontiguousarray(words.astype("<u8", copy=False)).view(np.uint8)  # (n, 8 W)
    on = np.unpackbits(as_bytes, axis=1, count=bits, bitorder="little")  # (n, bits) in {0, 1}
    return (on.astype(np.int8) * 2 - 1).astype(np.int8)


def pack_labels(labels: np.ndarray) -> np.ndarray:
    """Multi-hot labels ``(n, L)`` in {0, 1} -> ``uint64`` words ``(n, ceil(L/64))``.

    Two items are relevant to each other when they share a label: ``((a & b) != 0).any()``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise DataError(f"labels: expected a multi-hot matrix (n, n_labels), got shape {labels.shape}")
    if labels.size and not ((labels == 0) | (labels == 1)).all():
        raise DataError("labels: expected multi-hot values in {0, 1}; found other values "
                        f"(e.g. {np.unique(labels)[:5].tolist()})")
    return pack_codes(np.where(labels > 0, np.int8(1), np.int8(-1)))


def _words_column(words: np.ndarray) -> pa.FixedSizeListArray:
    words = np.ascontiguousarray(words, dtype=np.uint64)
    return pa.FixedSizeListArray.from_arrays(pa.array(words.reshape(-1), type=pa.uint64()), words.shape[1])


def codes_path(path_dir: Path, split: str, part: int = 0) -> Path:
    return Path(path_dir) / f"split={split}" / f"part-{int(part):05d}.parquet"


def codes_parts(path_dir: Path, split: str) -> list[Path]:
    """The part files of one split in part order (a run writes one; ``cmh encode`` one per chunk)."""
    return sorted((Path(path_dir) / f"split={split}").glob("part-*.parquet"))


def write_codes(
    path_dir: Path,
    split: str,
    item_ids: Sequence[int] | np.ndarray,
    image_codes: np.ndarray | None,
    text_codes: np.ndarray | None,
    meta: Mapping[str, Any],
    part: int = 0,
) -> Path:
    """Write ``<path_dir>/split=<split>/part-<part>.parquet`` (atomically) and return its path.

    Columns: ``item_id int64``, ``image_code`` and/or ``text_code`` as ``FixedSizeList<uint64>[W]``
    (a modality given as ``None`` is left out). The metadata holds ``meta`` plus ``bits``, ``words``,
    ``split`` and the sign and bit-order conventions.
    """
    ids = np.asarray(item_ids, dtype=np.int64)
    given = {m: c for m, c in (("image", image_codes), ("text", text_codes)) if c is not None}
    if not given:
        raise DataError(f"write_codes({split!r}): neither image nor text codes were given")
    bits = {m: check_codes(c, f"{m} codes ({split})").shape[1] for m, c in given.items()}
    if len(set(bits.values())) != 1:
        raise DataError(f"write_codes({split!r}): image and text codes differ in length: {bits}")
    for m, c in given.items():
        if c.shape[0] != ids.shape[0]:
            raise DataError(f"write_codes({split!r}): {ids.shape[0]} item ids but {c.shape[0]} {m} codes")
    k = next(iter(bits.values()))
    if "bits" in meta and int(meta["bits"]) != k:
        raise DataError(f"write_codes({split!r}): meta says bits={meta['bits']} but the codes have {k} bits")
    columns = {"item_id": pa.array(ids, type=pa.int64())}
    columns.update({CODE_COLUMNS[m]: _words_column(pack_codes(c)) for m, c in given.items()})
    table = pa.table(columns)
    full_meta = {**dict(meta), **CODE_CONVENTIONS, "bits": k, "words": n_words(k), "split": split,
                 "modalities": sorted(given),
                 "item_id_ascending": bool(np.all(np.diff(ids) > 0))}
    return write_table_atomic(table, codes_path(path_dir, split, part), metadata=full_meta,
                              vector_columns=list(CODE_COLUMNS.values()))


def read_codes(path_dir: Path, split: str, unpack: bool = True, fix: str = _RETRAIN) -> dict[str, Any]:
    """Read one split written by :func:`write_codes` (every part, in part order).

    ``unpack=False`` leaves out the ±1 arrays (8x the packed size: a big encoded collection needs only words).
    ``fix``: what a damaged part's error tells the user to do (codes of ``cmh encode`` are encoded again).

    Returns ``{"item_id": (n,) int64, "bits": int, "meta": dict, "image"/"text": (n, bits) int8 ±1,
    "image_words"/"text_words": (n, W) uint64}`` (modalities that were written); ``meta`` is the first part's.
    """
    paths = codes_parts(path_dir, split)
    if not paths:
        raise CacheError(f"no codes for split {split!r} at {codes_path(path_dir, split)}; run `cmh train` "
                         f"(or `cmh encode`) for this run first")
    metas = [read_metadata(p, fix) for p in paths]
    if any("bits" not in m for m in metas):
        raise CacheError(f"{paths[0].parent} holds a codes file without 'bits' in its metadata; it was not written "
                         f"by write_codes, re-encode the run")
    bits = int(metas[0]["bits"])
    if any(int(m["bits"]) != bits for m in metas):
        raise CacheError(f"{paths[0].parent} mixes code lengths {sorted({int(m['bits']) for m in metas})}; "
                         f"re-encode it (`cmh encode` or {_RETRAIN})")
    tables = [read_table(p, fix=fix) for p in paths]
    for path, part, meta in zip(paths, tables, metas):
        written = [CODE_COLUMNS[m] for m in meta.get("modalities") or CODE_COLUMNS if m in CODE_COLUMNS]
        present = [c for c in CODE_COLUMNS.values() if c in part.column_names]
        problem = (id_column_problem(part)
                   or next((why for c in written if (why := vector_column_problem(part, c, n_words(bits), "uint64"))),
                           None)
                   or (None if present else "has no code column"))
        if problem:  # a Parquet file with the name of a codes part, but not as write_codes wrote it
            raise CacheError(f"codes file {path} {problem}: {fix}")
    try:
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise CacheError(f"the codes parts under {paths[0].parent} differ in their columns ({exc}): {fix}") from None
    problem = id_column_problem(table)
    if problem:
        raise CacheError(f"the codes under {paths[0].parent} {problem}: {fix}")
    out: dict[str, Any] = {"item_id": table.column("item_id").to_numpy(), "bits": bits, "meta": metas[0]}
    for modality, col in CODE_COLUMNS.items():
        if col in table.column_names:
            chunked = table.column(col).combine_chunks()
            words = chunked.flatten().to_numpy(zero_copy_only=False).reshape(-1, n_words(bits)).astype(np.uint64)
            out[f"{modality}_words"] = words
            if unpack:
                out[modality] = unpack_codes(words, bits)
    return out
