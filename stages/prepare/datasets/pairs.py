"""Dataset source: a user's own image–text collection in a documented JSONL or CSV file (docs/pairs-format.md).

JSONL, one object per line::

    {"image": "photos/0001.jpg", "text": "A dog runs on the beach", "labels": ["dog", "beach"]}
    {"image": "photos/0002.jpg", "text": ["cat", "sofa", "indoor"], "labels": ["cat"], "id": 7}

CSV with a header ``image,text,labels[,id]``; several texts or labels in one cell are separated by
``|`` (options ``text_sep``, ``label_sep``). Image paths are relative to the file's folder (or
absolute). ``labels`` is required on every row (the evaluation's relevance is label overlap); a row
with an empty label list is dropped and recorded in ``skipped`` unless ``keep_unlabelled=True``.
``item_id`` is the ``id`` column when every row has one, else the 0-based record number.
Label columns follow ``label_names`` when given, else the sorted set of names seen.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from stages.prepare.datasets.base import ItemTable, TextKind, drop_unusable, register_dataset, report_skipped, whole_id
from stages.prepare.datasets.text import clean_texts, open_text, parse_json_line, read_lines
from pipeline.ground.errors import ConfigError, DataError
from pipeline.ground.paths import expand_home

log = logging.getLogger(__name__)

FILE_NAMES = ("pairs.jsonl", "pairs.csv")
_SUFFIXES = {".jsonl": "jsonl", ".json": "jsonl", ".csv": "csv"}


@register_dataset("pairs", aliases=("jsonl", "csv", "custom"), default_dir=None, default_root="data")
def pairs(
    data_dir: Path,
    *,
    file: str | Path | None = None,
    text_kind: TextKind = "captions",
    label_names: Sequence[str] | str | Path | None = None,
    text_sep: str = "|",
    label_sep: str = "|",
    keep_unlabelled: bool = False,
) -> ItemTable:
    """Your own image–text pairs with labels, from a JSONL or CSV file (format: docs/pairs-format.md).

    ``data_dir`` is the file itself or the folder holding ``pairs.jsonl`` / ``pairs.csv`` (``file``
    names another file in it). ``text_kind`` says whether texts are ``captions`` or ``tags``;
    ``label_names`` (a list, or a file with one name per line) fixes the label column order.
    """
    path = find_pairs_file(Path(data_dir), file)
    names = _label_names_option(label_names)
    return read_pairs_file(path, dataset="pairs", text_kind=text_kind, label_names=names, text_sep=text_sep,
                           label_sep=label_sep, keep_unlabelled=keep_unlabelled)


def find_pairs_file(data_dir: Path, file: str | Path | None = None) -> Path:
    """The pairs file: ``data_dir`` itself, ``data_dir/file``, or the one ``pairs.jsonl``/``pairs.csv`` in it."""
    data_dir = expand_home(data_dir)
    if data_dir.is_file() and file is None:
        return data_dir.resolve()
    if data_dir.exists() and not data_dir.is_dir():  # /dev/null, a device or FIFO (or a link to one): never read
        raise DataError(f"dataset 'pairs': {data_dir} is not a regular file or a folder (a device, FIFO or socket); "
                        f"pass DATA_DIR=<your pairs.jsonl or pairs.csv, or the folder holding it> (CLI: --data-dir)")
    if not data_dir.is_dir():
        raise DataError(f"dataset 'pairs': {data_dir} does not exist; pass DATA_DIR=<your pairs.jsonl or "
                        f"pairs.csv, or the folder holding it> (CLI: --data-dir); format: docs/pairs-format.md")
    if file is not None:
        path = Path(file) if Path(file).is_absolute() else data_dir / file
        if not path.is_file():
            raise DataError(f"dataset 'pairs': file {path} "
                            f"{'is not a regular file' if path.exists() else 'does not exist'}; name the pairs file "
                            f"with the option file=<name> (docs/pairs-format.md)")
        return path.resolve()
    found = [data_dir / n for n in FILE_NAMES if (data_dir / n).is_file()]
    if not found:
        raise DataError(f"dataset 'pairs': no {' or '.join(FILE_NAMES)} in {data_dir}; write one "
                        f"(docs/pairs-format.md) or name the file with the option file=<name>")
    if len(found) > 1:
        raise DataError(f"dataset 'pairs': both {found[0].name} and {found[1].name} are in {data_dir}; "
                        f"choose one with the option file=<name>")
    return found[0].resolve()


def read_pairs_file(
    path: Path,
    *,
    dataset: str,
    text_kind: TextKind = "captions",
    label_names: list[str] | None = None,
    text_sep: str = "|",
    label_sep: str = "|",
    keep_unlabelled: bool = False,
) -> ItemTable:
    """Parse a pairs file into an ItemTable (also used by the demo source, which writes one)."""
    if text_kind not in ("captions", "tags"):
        raise ConfigError(f"pairs option text_kind={text_kind!r}: use 'captions' or 'tags'")
    for option, sep in (("text_sep", text_sep), ("label_sep", label_sep)):
        if not isinstance(sep, str) or not sep or sep.isspace() and sep != "\t":
            raise ConfigError(f"pairs option {option}={sep!r}: give the character that separates the items of a "
                              f"cell, e.g. -o dataset.{option}='|'")
    kind = _SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise DataError(f"{path}: unknown pairs file type {path.suffix!r}; use .jsonl or .csv (docs/pairs-format.md)")
    rows = _read_jsonl(path) if kind == "jsonl" else _read_csv(path, text_sep, label_sep, text_kind)
    if not rows:
        raise DataError(f"{path} has no pairs")

    has_id = [r["id"] is not None for r in rows]
    if any(has_id) and not all(has_id):
        where = rows[has_id.index(False)]["where"]
        raise DataError(f"{where}: has no id, but other rows do; give an id on every row or on none")
    ids = [whole_id(r["id"], r["where"]) if r["id"] is not None else k for k, r in enumerate(rows)]
    uniq, counts = np.unique(np.asarray(ids, dtype=np.int64), return_counts=True)
    if (counts > 1).any():
        raise DataError(f"{path}: duplicate ids {uniq[counts > 1][:5].tolist()}; every row needs its own id")

    seen = sorted({name for r in rows for name in r["labels"]})
    names = list(label_names) if label_names is not None else seen
    column = {name: j for j, name in enumerate(names)}
    if len(column) != len(names):
        raise ConfigError(f"label_names for {path} repeat a name: {names}")
    labels = np.zeros((len(rows), len(names)), dtype=np.uint8)  # (n, L)
    keep: list[int] = []
    skipped: list[tuple[Any, str]] = []
    for k, r in enumerate(rows):
        for name in r["labels"]:
            if name not in column:
                raise DataError(f"{r['where']}: label {name!r} is not in label_names ({len(names)} names)")
            labels[k, column[name]] = 1
        if labels[k].any() or keep_unlabelled:
            keep.append(k)
        else:
            skipped.append((ids[k], "no labels"))
    if skipped:
        report_skipped(dataset, skipped, path)
    base = path.parent
    images = [expand_home(r["image"]) for r in rows]  # "~/photos/a.jpg" means the home folder
    refs = [str(image if image.is_absolute() else base / image) for image in images]
    sel = np.asarray(keep, dtype=np.int64)
    table = ItemTable(
        dataset=dataset,
        item_id=np.asarray(ids, dtype=np.int64)[sel],
        image=[refs[k] for k in sel],
        texts=[rows[k]["texts"] for k in sel],
        labels=labels[sel],
        label_names=names,
        text_kind=text_kind,
        source=str(path),
        skipped=skipped,
    )
    return drop_unusable(table).validate()


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open_text(path) as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path} line {line_no}"
            obj = parse_json_line(line, where, line_no, "image, text, labels")
            rows.append(_row(obj, where, split_text=None, split_labels=None))
    commas = sorted({name for r in rows for name in r["labels"] if "," in name or ";" in name})
    if commas:  # one JSON string is one label, as written; but say it, since "cat,dog" is usually two
        log.warning("%s: %d label name(s) hold a comma or semicolon, each read as one label (e.g. %r); give several "
                    "labels as separate strings: [\"cat\", \"dog\"]", path, len(commas), commas[0])
    return rows


def _read_csv(path: Path, text_sep: str, label_sep: str, text_kind: str) -> list[dict[str, Any]]:
    rows = []
    multiline = 0
    lines = open_text(path).readlines()  # physical lines, as the csv reader counts them
    delimiter = _delimiter(lines, path)
    # strict: a quote never closed, or text after a closing quote, is an error instead of a guess
    reader = csv.reader(lines, strict=True, delimiter=delimiter)
    header, end = _csv_header(reader, path)
    while True:
        start = end + 1
        try:
            cells = next(reader, None)
        except csv.Error as exc:
            raise _quote_error(path, lines, header, start, reader.line_num, exc, delimiter) from None
        if cells is None:
            break
        end = reader.line_num
        if not any(c.strip() for c in cells):
            continue
        where = f"{path} line {start}" if end == start else f"{path} lines {start}-{end}"
        if end > start:
            swallowed = _row_inside(lines, header, path.parent, start, end, delimiter)
            if swallowed is not None:
                raise DataError(f"{path} line {start}: the quote that opens in column "
                                f"{_open_column(lines, header, start, delimiter)} "
                                f"closes only on line {end}, so line {swallowed[0]} ({swallowed[1]!r}) and the lines "
                                f"between were read into that cell; {_CLOSE.format(line=start)}")
            multiline += 1
        if len(cells) > len(header):
            raise DataError(f"{where}: more cells than header columns {header}; quote cells that contain commas")
        obj: dict[str, Any] = dict(zip(header, cells))
        _check_separators(obj, where, text_sep, label_sep, text_kind)
        rows.append(_row(obj, where, split_text=text_sep, split_labels=label_sep))
    if multiline:
        log.info("%s: %d row(s) have a quoted cell with line breaks, each read as one cell", path, multiline)
    return rows


_CLOSE = "close the quote that opens on line {line} (a quote inside a cell is written twice: \"\")"


def _csv_header(reader: Any, path: Path) -> tuple[list[str], int]:
    """The column names, as written but for case and surrounding spaces (``Image`` is ``image``)."""
    for cells in reader:
        if any(c.strip() for c in cells):
            names = [c.strip().lower() for c in cells]
            twice = sorted({n for n in names if n and names.count(n) > 1})
            if twice:  # zip() into a dict would keep the last column silently (every label "x")
                raise DataError(f"{path} line {reader.line_num}: the header names column(s) {twice} more than once "
                                f"(column names are read without case); keep one column of each name")
            return names, reader.line_num
    raise DataError(f"{path} is empty; expected a header line image,text,labels[,id]")


def _delimiter(lines: list[str], path: Path) -> str:
    """``,``, or the ``;`` or tab that the header line separates its columns with (spreadsheet programs in
    many locales write ``;``); said when it is not a comma."""
    head = next((line for line in lines if line.strip()), "")
    for delimiter in (",", ";", "\t"):
        try:
            names = {c.strip().lower() for c in next(csv.reader([head], delimiter=delimiter), [])}
        except csv.Error:
            continue
        if {"image", "text", "labels"} <= names:
            if delimiter != ",":
                log.info("%s: cells are separated by %r (read from its header line)", path, delimiter)
            return delimiter
    return ","


def _quote_error(path: Path, lines: list[str], header: list[str], start: int, stop: int, exc: csv.Error,
                 delimiter: str) -> DataError:
    """The one-line error for a record the strict reader refused (started on ``start``, failed on ``stop``)."""
    at_end = stop >= len(lines) and "end of data" in str(exc)
    swallowed = _row_inside(lines, header, path.parent, start, stop + 1, delimiter)
    column = _open_column(lines, header, start, delimiter)
    if at_end:
        return DataError(f"{path} line {start}: the quote that opens in column {column} is never closed, so every "
                         f"line after it was read into that cell; {_CLOSE.format(line=start)}")
    if swallowed is not None:
        return DataError(f"{path} line {start}: the quote that opens in column {column} closes only on line {stop}, "
                         f"so line {swallowed[0]} ({swallowed[1]!r}) and the lines between were read into that cell; "
                         f"{_CLOSE.format(line=start)}")
    return DataError(f"{path} line {stop}: {exc}: a quoted cell must end with its quote and nothing may follow it "
                     f"in the cell; {_CLOSE.format(line=start)}")


def _open_column(lines: list[str], header: list[str], line: int, delimiter: str) -> str:
    """The column whose quote opens on ``line`` and stays open: the last cell that line holds."""
    try:
        cells = next(csv.reader([lines[line - 1]], delimiter=delimiter), [])
    except (csv.Error, IndexError):
        return "?"
    at = len(cells) - 1
    return repr(header[at]) if 0 <= at < len(header) else f"{at + 1}"


def _row_inside(lines: list[str], header: list[str], base: Path, start: int, end: int,
                delimiter: str) -> tuple[int, str] | None:
    """(line number, text) of the first line after ``start`` and before ``end`` that is a row of its own.

    A quote that opens in one row and closes rows later makes one cell of those rows, so they vanish and
    every later id shifts; a caption with a line break holds no line with an image cell of its own."""
    image_at = header.index("image") if "image" in header else 0
    for number in range(start + 1, min(end, len(lines) + 1)):
        text = lines[number - 1].rstrip("\r\n")
        try:
            parsed = next(csv.reader([text], delimiter=delimiter), [])
        except csv.Error:
            continue
        if len(parsed) >= len(header) and _names_an_image(parsed[image_at].strip(), base):
            return number, text[:40]
    return None


def _names_an_image(cell: str, base: Path) -> bool:
    return bool(cell) and (Path(cell).suffix.lower() in IMAGE_SUFFIXES or (base / cell).is_file())


#: File name endings of images, for telling a row from a line of a caption.
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


def _check_separators(obj: dict[str, Any], where: str, text_sep: str, label_sep: str, text_kind: str) -> None:
    """DataError for list cells separated with another character than the file's separator: ``cat,dog``
    in a label cell would be one label named "cat,dog"."""
    cells = [("labels", label_sep)] + ([("text", text_sep)] if text_kind == "tags" else [])
    for column, sep in cells:
        value = obj.get(column)
        if not isinstance(value, str):
            continue
        other = next((c for c in ",;" if c != sep and c in value), None)
        if other is not None:
            option = "label_sep" if column == "labels" else "text_sep"
            joined = sep.join(p.strip() for p in value.split(other) if p.strip())
            raise DataError(f"{where}: the {column} cell {value!r} holds {other!r}, but {column} are separated by "
                            f"{sep!r}: write {joined!r}, or pass -o dataset.{option}={other} if {other!r} is the "
                            f"separator of this file")


def _row(obj: dict[str, Any], where: str, *, split_text: str | None, split_labels: str | None) -> dict[str, Any]:
    """Validate one record; ``split_*`` set for CSV cells, which hold ``sep``-joined lists."""
    missing = [k for k in ("image", "text", "labels") if k not in obj]
    if missing:
        hint = " (labels are required: see docs/pairs-format.md)" if "labels" in missing else ""
        raise DataError(f"{where}: missing field(s) {missing}{hint}")
    null = [k for k in ("image", "text", "labels") if obj[k] is None]
    if null:  # the field is there: "missing" would send the user looking for a typo in its name
        raise DataError(f"{where}: field(s) {null} are null; give a value (an empty list [] for no text or "
                        f"labels, which drops the row, counted)")
    text, labels = obj["text"], obj["labels"]
    if split_text is not None:
        text = text.split(split_text)
    if split_labels is not None:
        labels = labels.split(split_labels) if labels.strip() else []
    if isinstance(text, str):
        text = [text]
    if not isinstance(text, list) or not all(isinstance(t, str) for t in text):
        raise DataError(f"{where}: text must be a string or a list of strings")
    if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
        raise DataError(f"{where}: labels must be a list of label names (strings)")
    if not isinstance(obj["image"], str) or not obj["image"].strip():
        raise DataError(f"{where}: image must be a non-empty path")
    ident = obj.get("id")
    if isinstance(ident, str) and not ident.strip():
        ident = None
    return {"image": obj["image"].strip(), "texts": clean_texts(text), "labels": clean_texts(labels),
            "id": ident, "where": where}


def _label_names_option(value: Sequence[str] | str | Path | None) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_file():
            raise ConfigError(f"pairs option label_names={value!r}: give a list of names or a file with one per line")
        return read_lines(path)
    return [str(x) for x in value]
