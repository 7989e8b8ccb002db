"""Small text helpers shared by the dataset sources (tag lists and captions)."""
from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any, Iterable

from pipeline.ground.errors import DataError


def read_text(path: Path) -> str:
    """A UTF-8 text file as one string, a byte-order mark dropped; DataError naming the line that is not UTF-8.

    Spreadsheet programs write CSV with a BOM (which would otherwise glue itself to the first column
    name) or in a legacy encoding (which would otherwise surface as a UnicodeDecodeError traceback).
    """
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise DataError(f"{path} line {line} is not UTF-8 (byte 0x{data[exc.start]:02x}); re-save the file as "
                        f"UTF-8, e.g. `iconv -f latin1 -t utf-8 {Path(path).name} > fixed{Path(path).suffix}` "
                        f"if it was written as Latin-1") from None


def open_text(path: Path) -> io.StringIO:
    """``read_text`` as a file object (for csv readers); universal newlines like ``open(newline='')``."""
    return io.StringIO(read_text(path), newline="")


def json_lines_hint(line: str, line_no: int) -> str:
    """Why a line may not parse: a comma after a complete object, or the file is one JSON document (an
    array, or a pretty-printed object)."""
    head = line.strip()
    if head.endswith(",") and _parses(head[:-1].rstrip()):
        return (" (a comma follows the object: JSON Lines puts one object on each line with nothing between them; "
                "remove the comma at the end of each line, see docs/pairs-format.md)")
    if line_no == 1 and head.startswith("[") or head in ("{", "[", "}", "]", "},", "],") or head.endswith(("{", ",")):
        return (" (the file looks like one JSON document, an array or an object spread over several lines; the "
                "pairs format is JSON Lines: one complete object per line, see docs/pairs-format.md)")
    return ""


def _parses(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except ValueError:
        return False


class _DuplicateKey(ValueError):
    def __init__(self, key: str) -> None:
        super().__init__(key)
        self.key = key


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    for k in keys:
        if keys.count(k) > 1:
            raise _DuplicateKey(k)
    return dict(pairs)


def parse_json_line(line: str, where: str, line_no: int, fields: str) -> dict[str, Any]:
    """One JSON Lines record as a dict; DataError naming ``where`` otherwise.

    A key given twice in one object is an error: JSON parsers keep the last silently, so
    ``"labels": ["dog"], ..., "labels": []`` would drop the row's labels without a word."""
    try:
        obj = json.loads(line, object_pairs_hook=_no_duplicate_keys)
    except _DuplicateKey as exc:
        raise DataError(f"{where}: the key {exc.key!r} appears twice in one object, and only one can be "
                        f"meant; keep one") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{where} is not valid JSON: {exc}{json_lines_hint(line, line_no)}") from None
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object with {fields}{json_lines_hint(line, line_no)}")
    return obj


def read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a small text file (vocabularies, label names)."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]


def split_tags(field: str, sep: str = ",") -> list[str]:
    """Tags of one item from a separated string; surrounding spaces and empty pieces dropped."""
    return [t.strip() for t in field.split(sep) if t.strip()]


def clean_texts(texts: Iterable[object]) -> list[str]:
    """Captions or tags as stripped strings, empty ones dropped (order kept)."""
    return [str(t).strip() for t in texts if str(t).strip()]


def resolve_tied_columns(vocabulary: list[str]) -> tuple[list[str], list[str]]:
    """Split ``"a|b"`` entries that name columns which cannot be told apart, returning (words, notes).

    The DCMH MIRFlickr vocabulary has ``save7|save8`` at two columns: the two tags always occur
    together, so which column is which cannot be recovered. An entry with k alternatives that appears
    exactly k times gets its alternatives in order of appearance; since the tags co-occur, a BoW built
    from the tags with the result reproduces ``YAll`` exactly (checked by the tests on the real files).
    Any other ``|`` entry is left as it is.
    """
    counts: dict[str, int] = {}
    for word in vocabulary:
        counts[word] = counts.get(word, 0) + 1
    seen: dict[str, int] = {}
    out: list[str] = []
    notes: list[str] = []
    for j, word in enumerate(vocabulary):
        alternatives = word.split("|")
        if len(alternatives) > 1 and counts[word] == len(alternatives):
            k = seen.get(word, 0)
            seen[word] = k + 1
            out.append(alternatives[k])
            notes.append(f"vocabulary column {j} {word!r} read as {alternatives[k]!r} (the tags always co-occur)")
        else:
            out.append(word)
    return out, notes


def load_vocabulary(path: Path) -> tuple[list[str], list[str]]:
    """A vocabulary file (one word per line, in BoW column order) as (words, notes); DataError on duplicates."""
    words, notes = resolve_tied_columns(read_lines(path))
    seen: set[str] = set()
    dupes = [w for w in words if w in seen or seen.add(w)]
    if dupes:
        raise DataError(f"{path} lists {sorted(set(dupes))[:5]} more than once; a BoW vocabulary needs one "
                        f"word per column")
    return words, notes
