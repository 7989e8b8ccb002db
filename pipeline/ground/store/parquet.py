"""Parquet helpers: vector columns as FixedSizeList, provenance in schema metadata, atomic writes."""
from __future__ import annotations

import errno
import json
import os
import stat
from pathlib import Path
from typing import Any, Iterable, Mapping, NoReturn

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.ground.errors import CacheError
from pipeline.ground.store.tempfiles import partial_for

#: Key of the JSON provenance blob in every file's schema metadata.
META_KEY = b"cmh"


def vectors_to_arrow(x: np.ndarray) -> pa.FixedSizeListArray:
    """(n, d) array -> FixedSizeList<dtype>[d], a zero-copy wrap of the contiguous buffer."""
    x = np.ascontiguousarray(x)
    if x.ndim != 2:
        raise ValueError(f"expected a 2-D array of vectors, got shape {x.shape}")
    return pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), x.shape[1])


def arrow_to_vectors(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """FixedSizeList column -> (n, d) numpy array (one copy at most, when there are several chunks)."""
    if isinstance(col, pa.ChunkedArray):
        chunks = [c for c in col.chunks if len(c)]
        if not chunks:
            width = col.type.list_size
            return np.zeros((0, width), dtype=col.type.value_type.to_pandas_dtype())
        parts = [arrow_to_vectors(c) for c in chunks]
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    width = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).reshape(-1, width)


def vector_column_problem(table: pa.Table | pa.Schema, name: str, width: int | None = None,
                          values: str = "numeric") -> str | None:
    """Why column ``name`` is not a vector column (``FixedSizeList`` of ``width`` numbers, or of
    ``values="uint64"`` words, with no row missing), or None. A file of the right name may hold anything
    Arrow can read. On a schema only the type is checked."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    if name not in schema.names:
        return f"has no column {name!r}"
    kind = schema.field(name).type
    if not pa.types.is_fixed_size_list(kind):
        return f"has column {name!r} of type {kind}, not fixed-size vectors"
    value = kind.value_type
    if not (value == pa.uint64() if values == "uint64" else pa.types.is_integer(value) or pa.types.is_floating(value)):
        return f"has column {name!r} of {value} vectors, not {values}"
    if width is not None and kind.list_size != width:
        return f"has column {name!r} of width {kind.list_size}, not {width}"
    if isinstance(table, pa.Table) and table.column(name).null_count:
        return f"has {table.column(name).null_count} row(s) without a {name!r} vector"
    return None


def id_column_problem(table: pa.Table | pa.Schema, name: str = "item_id") -> str | None:
    """Why ``name`` is not a column of distinct integer ids (on a schema: only its type is checked), or None.
    A repeated id would pair one item's row with another's, or list an item twice, without a word."""
    schema = table if isinstance(table, pa.Schema) else table.schema
    if name not in schema.names:
        return f"has no column {name!r}"
    if not pa.types.is_integer(schema.field(name).type):
        return f"has column {name!r} of type {schema.field(name).type}, not integers"
    if isinstance(table, pa.Table):
        column = table.column(name)
        if column.null_count:
            return f"has {column.null_count} row(s) without an {name}"
        values, counts = np.unique(column.to_numpy(), return_counts=True)
        repeated = values[counts > 1]
        if len(repeated):
            more = f" (and {len(repeated) - 1} other id(s))" if len(repeated) > 1 else ""
            return f"lists {name} {int(repeated[0])}{more} more than once"
    return None


def write_table_atomic(
    table: pa.Table,
    path: str | os.PathLike,
    *,
    metadata: Mapping[str, Any] | None = None,
    vector_columns: Iterable[str] = (),
) -> Path:
    """Write to ``<dir>/*.parquet.partial``, fsync, then rename, so readers never see half a file.

    The ``.partial`` suffix never matches the ``*.parquet`` globs readers use.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if metadata is not None:
        existing = dict(table.schema.metadata or {})
        existing[META_KEY] = json.dumps(metadata, sort_keys=True, default=str).encode()
        table = table.replace_schema_metadata(existing)
    vectors = [c for c in vector_columns if c in table.column_names]
    float_vectors = [c for c in vectors if pa.types.is_floating(table.schema.field(c).type.value_type)]
    fd, tmp = partial_for(path)
    os.close(fd)
    try:
        pq.write_table(
            table,
            tmp,
            compression="zstd",
            compression_level=3,
            use_dictionary=[c for c in table.column_names if c not in vectors],
            use_byte_stream_split=float_vectors or False,
            write_statistics=[c for c in table.column_names if c not in vectors],
            row_group_size=8192,
        )
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _discard(tmp, exc, path)
    return path


def _discard(tmp: str, exc: BaseException, path: Path) -> NoReturn:
    """Remove the ``.partial`` file of a failed write and re-raise; an OSError without a file name (Arrow's
    writer raises a full disk so) or naming the temporary file is raised again naming ``path``, which the
    CLI's one-line error shows."""
    Path(tmp).unlink(missing_ok=True)
    # an error naming the temporary file (the rename onto a folder: "<path>.x3rcc72l.partial: Is a directory")
    # names a file the user never gave and that no longer exists: name the destination instead
    if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, tmp):
        raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from None
    raise exc


def write_json_atomic(obj: Any, path: str | os.PathLike) -> Path:
    """Write ``obj`` as JSON to a ``.partial`` sibling, fsync, then rename; a failed write leaves nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = partial_for(path)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(obj, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _discard(tmp, exc, path)
    return path


def write_bytes_atomic(data: bytes, path: str | os.PathLike) -> Path:
    """Write ``data`` to a ``.partial`` sibling, fsync, then rename (pages, thumbnails, figures)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = partial_for(path)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        _discard(tmp, exc, path)
    return path


#: What the cache's files are rebuilt with, for the message when one of them is unreadable.
REBUILD_HINT = "delete it and re-run the command that wrote it (`cmh extract --overwrite`, `cmh train --force`)"


def unreadable(path: str | os.PathLike, exc: BaseException, fix: str = REBUILD_HINT) -> CacheError:
    """The one-line error for a truncated or foreign file in the cache."""
    detail = (str(exc).splitlines()[0] if str(exc) else type(exc).__name__).split(". ")[0]
    if str(path) in detail:  # Arrow repeats the path the message already names: keep what it says after it
        detail = detail.split(str(path))[-1].lstrip("': ") or detail
    if len(detail) > 120:  # cut at the front, said ("arquet input source" read as a typo)
        detail = "..." + detail[-117:]
    return CacheError(f"{path} is damaged or not a Parquet file ({detail}): {fix}")


def _refuse_special(path: str | os.PathLike, fix: str) -> None:
    """CacheError for a FIFO, socket or device where a cache file belongs: opening one blocks or reads
    forever. A directory passes (Arrow reads a partitioned folder, or says why it cannot)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return  # missing or unreadable: the reader's own error names it
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise CacheError(f"{path} is not a regular file (a pipe, socket or device): {fix}")


#: OSErrors of the process or the file's permissions, not of the file's bytes: a file that cannot be opened
#: for them is intact, and calling it damaged would have it deleted and rebuilt for nothing.
NOT_THE_FILE = (errno.EMFILE, errno.ENFILE, errno.EACCES, errno.EPERM, errno.ENOMEM)


def raise_if_not_the_file(exc: BaseException, path: str | os.PathLike) -> None:
    """Re-raise ``exc`` as a plain OSError naming ``path`` when it is one of ``NOT_THE_FILE`` (the CLI says the
    fix in one line: raise `ulimit -n`, make the file readable); return otherwise."""
    if isinstance(exc, OSError) and exc.errno in NOT_THE_FILE:
        raise OSError(exc.errno, os.strerror(exc.errno), str(path)) from None


def read_table(path: str | os.PathLike, columns: list[str] | None = None, fix: str = REBUILD_HINT) -> pa.Table:
    """``pq.read_table`` with a CacheError naming the file and the fix instead of an Arrow traceback."""
    _refuse_special(path, fix)
    try:
        return pq.read_table(path, columns=columns)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise_if_not_the_file(exc, path)
        raise unreadable(path, exc, fix) from None


def read_metadata(path: str | os.PathLike, fix: str = REBUILD_HINT) -> dict[str, Any]:
    """The provenance blob of one Parquet file ({} when absent)."""
    _refuse_special(path, fix)
    try:
        meta = pq.read_schema(path).metadata or {}
        raw = meta.get(META_KEY)
        blob = json.loads(raw) if raw else {}
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise_if_not_the_file(exc, path)
        raise unreadable(path, exc, fix) from None
    if not isinstance(blob, dict):
        raise CacheError(f"{path} is damaged (its cmh metadata is a JSON {json_kind(blob)}, not an object): {fix}")
    return blob


def read_json(path: str | os.PathLike, fix: str = REBUILD_HINT) -> Any:
    """A JSON file of the cache (a manifest, a run config), CacheError when it is damaged."""
    _refuse_special(path, fix)
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise CacheError(f"{path} is damaged ({exc}): {fix}") from None


def json_kind(value: Any) -> str:
    """What JSON calls ``value``'s type (``array``, ``null``, ``number``...), for messages about a record."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    return {dict: "object", list: "array", str: "string", int: "number", float: "number"}.get(type(value), "value")


def check_record(record: Any, path: str | os.PathLike, fix: str,
                 fields: Mapping[str, type | tuple[type, ...]] = {}) -> dict[str, Any]:
    """``record`` (JSON read from ``path``) when it is an object holding ``fields`` with those types; CacheError
    naming what is wrong otherwise. Valid JSON of another shape (``[]``, ``null``, ``{}``) would otherwise reach
    the reader as an AttributeError or KeyError, or, read with ``.get``, as a record that says nothing."""
    if not isinstance(record, dict):
        raise CacheError(f"{path} is damaged (a JSON {json_kind(record)}, not an object): {fix}")
    missing = [name for name in fields if name not in record]
    if missing:
        raise CacheError(f"{path} is damaged (no {', '.join(missing)}): {fix}")
    for name, kind in fields.items():
        value = record[name]
        if isinstance(value, bool) and bool not in (kind if isinstance(kind, tuple) else (kind,)):
            value = None  # True is an int to Python, not a count or a length
        if not isinstance(value, kind):
            raise CacheError(f"{path} is damaged ({name} is a JSON {json_kind(record[name])}): {fix}")
    return record


def read_json_object(path: str | os.PathLike, fix: str = REBUILD_HINT,
                     fields: Mapping[str, type | tuple[type, ...]] = {}) -> dict[str, Any]:
    """A JSON record of the cache that must be an object with ``fields`` (see ``check_record``)."""
    return check_record(read_json(path, fix), path, fix, fields)
