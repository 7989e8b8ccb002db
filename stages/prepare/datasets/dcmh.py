"""Reading the DCMH/DJSRH ``.mat`` files, shared by the mirflickr and nuswide sources.

The files come in two container formats: MATLAB v5 (``scipy.io.loadmat``, arrays as MATLAB stores
them, ``(N, d)``) and v7.3 HDF5 (``h5py``, which reads MATLAB's column-major arrays transposed, so a
MATLAB ``(N, d)`` matrix arrives as ``(d, N)``; NUS-WIDE ``YAll`` is the known case). Callers orient
every matrix by its item count rather than trusting either convention.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from stages.prepare.datasets.base import ItemTable, drop_unusable, require_file
from stages.prepare.datasets.text import load_vocabulary, read_lines
from pipeline.ground.errors import DataError

log = logging.getLogger(__name__)


def is_hdf5(path: Path) -> bool:
    import h5py

    return bool(h5py.is_hdf5(str(path)))


def read_matrix(path: Path, key: str) -> np.ndarray:
    """The 2-D array ``key`` of ``path`` as stored (see the module docstring for orientation)."""
    if is_hdf5(path):
        import h5py

        with h5py.File(path, "r") as f:
            if key not in f:
                raise DataError(f"{path} has no variable {key!r} (it holds: {', '.join(sorted(f.keys()))})")
            arr = np.asarray(f[key][()])
    else:
        import scipy.io
        import scipy.sparse

        try:
            mat = scipy.io.loadmat(str(path), variable_names=[key])
        except (ValueError, OSError, TypeError) as exc:  # scipy raises these for truncated or foreign files
            raise DataError(f"cannot read {path} as a MATLAB file: {exc}") from exc
        if key not in mat:
            raise DataError(f"{path} has no variable {key!r}: is this the DCMH file it is named after?")
        arr = mat[key]
        if scipy.sparse.issparse(arr):
            arr = arr.toarray()
        arr = np.asarray(arr)
    if arr.ndim != 2:
        raise DataError(f"{path}: {key} has shape {arr.shape}, expected a 2-D matrix")
    return arr


def orient_rows(arr: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    """``arr`` as ``(n, d)``: transposed when it was stored ``(d, n)`` (h5py reading a MATLAB matrix)."""
    if arr.shape[0] == n:
        return arr
    if arr.shape[1] == n:
        return arr.T
    raise DataError(f"{path}: {key} has shape {arr.shape}, but the dataset has {n} items; "
                    f"expected ({n}, d) or (d, {n}). Are the files from the same release?")


def binary_uint8(arr: np.ndarray, path: Path, key: str) -> np.ndarray:
    """A 0/1 matrix as uint8, or DataError naming the first row holding another value."""
    bad = (arr != 0) & (arr != 1)
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise DataError(f"{path}: {key} row {row} holds values other than 0/1 ({arr[row][bad[row]][:5].tolist()}); "
                        f"expected a binary matrix")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def image_stack_rows(path: Path) -> int:
    """Number of images in an HDF5 ``IAll`` stack ``(N, 3, H, W)``, checked without reading pixels."""
    import h5py

    if not is_hdf5(path):
        raise DataError(f"{path} is not an HDF5 (MATLAB v7.3) file; the DCMH IAll image stack is stored that way")
    with h5py.File(path, "r") as f:
        if "IAll" not in f:
            raise DataError(f"{path} has no dataset 'IAll' (it holds: {', '.join(sorted(f.keys()))})")
        shape = f["IAll"].shape
    if len(shape) != 4 or shape[1] != 3:
        raise DataError(f"{path}: IAll has shape {shape}, expected (N, 3, H, W) as h5py reads the DCMH files")
    return int(shape[0])


def stack_refs(path: Path, n: int) -> list[str]:
    """Image references ``"<abs path>#<row>"`` that ``pipeline.ground.images.load_image`` opens."""
    base = str(Path(path).resolve())
    return [f"{base}#{i}" for i in range(n)]


def bow_texts(bow: np.ndarray, vocabulary: list[str]) -> list[list[str]]:
    """Per row, the vocabulary words whose BoW entry is non-zero, in vocabulary (column) order."""
    rows, cols = np.nonzero(bow)  # row-major, so each row's columns come out ascending
    bounds = np.searchsorted(rows, np.arange(bow.shape[0] + 1))
    words = np.asarray(vocabulary, dtype=object)
    return [words[cols[bounds[i]:bounds[i + 1]]].tolist() for i in range(bow.shape[0])]


def count_uint8(arr: np.ndarray, path: Path, key: str) -> np.ndarray:
    """A non-negative integer count matrix (a BoW) as uint8, or DataError naming the first bad row."""
    bad = (arr < 0) | (arr > 255) | (arr != np.round(arr))
    if bad.any():
        row = int(np.argwhere(bad)[0, 0])
        raise DataError(f"{path}: {key} row {row} holds values that are not counts in 0..255 "
                        f"({arr[row][bad[row]][:5].tolist()}); expected a bag-of-words matrix")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def read_dcmh_mat(
    dataset: str,
    data_dir: Path,
    files: dict[str, str],
    *,
    vocabulary: Path | None,
    label_names: list[str] | None,
    default_label_names: list[str] | None = None,
    text_kind: str = "tags",
    drop_empty_text: bool = True,
) -> ItemTable:
    """An ItemTable from a DCMH triple ``files = {"image": iall, "text": yall, "labels": lall}``.

    Rows are the item ids (0-based row in the files). ``bow`` is ``YAll`` as shipped ``(n, V)``; texts
    are the vocabulary words present in each row when a vocabulary file is given or found next to
    the files, else the column names ``"t<j>"`` (with ``vocabulary = ["t0", ...]``, so a BoW built
    from the texts reproduces ``YAll``). Label names: ``label_names`` if given, else
    ``label_names.txt`` beside the files, else ``default_label_names``, else ``label_0 ...``.
    """
    layout = f"the DCMH .mat layout ({', '.join(files.values())})"
    paths = {role: require_file(data_dir / name, dataset, layout) for role, name in files.items()}
    n = image_stack_rows(paths["image"])
    labels = binary_uint8(orient_rows(read_matrix(paths["labels"], "LAll"), n, paths["labels"], "LAll"),
                          paths["labels"], "LAll")  # (n, L)
    bow = count_uint8(orient_rows(read_matrix(paths["text"], "YAll"), n, paths["text"], "YAll"),
                      paths["text"], "YAll")  # (n, V)
    notes: list[str] = []

    vocab_path = Path(vocabulary) if vocabulary is not None else _first_existing(
        data_dir, ("yall_vocab_dcmh_order.txt", "vocabulary.txt"))
    if vocab_path is not None:
        vocab, tie_notes = load_vocabulary(require_file(vocab_path, dataset, "the vocabulary option"))
        notes += tie_notes
        if len(vocab) != bow.shape[1]:
            raise DataError(f"{vocab_path} has {len(vocab)} words but {paths['text']} YAll has {bow.shape[1]} "
                            f"columns; give the vocabulary file written for these .mat files")
        notes.append(f"texts: words of {vocab_path} present in YAll")
    else:
        vocab = [f"t{j}" for j in range(bow.shape[1])]
        notes.append("texts: no vocabulary file beside the .mat files, so texts are YAll column names t<j>")
        log.info("dataset %r: no vocabulary file in %s; texts are YAll column names t0..t%d",
                 dataset, data_dir, bow.shape[1] - 1)

    names_path = data_dir / "label_names.txt"
    if label_names is not None:
        names = [str(x) for x in label_names]
    elif names_path.is_file():
        names = read_lines(names_path)
    elif default_label_names is not None:
        names = list(default_label_names)
    else:
        names = [f"label_{j}" for j in range(labels.shape[1])]
        notes.append("label names: none shipped, so generic label_<j>")
    if len(names) != labels.shape[1]:
        raise DataError(f"{len(names)} label names given for {paths['labels']}, whose LAll has "
                        f"{labels.shape[1]} columns; give one name per column")

    table = ItemTable(
        dataset=dataset,
        item_id=np.arange(n, dtype=np.int64),
        image=stack_refs(paths["image"], n),
        texts=bow_texts(bow, vocab),
        labels=labels,
        label_names=names,
        text_kind=text_kind,  # type: ignore[arg-type]
        source=str(data_dir),
        vocabulary=vocab,
        bow=bow,
        notes=notes,
    )
    return drop_unusable(table, check_image_files=False, drop_empty_text=drop_empty_text).validate()


def _first_existing(folder: Path, names: tuple[str, ...]) -> Path | None:
    for name in names:
        if (folder / name).is_file():
            return folder / name
    return None
