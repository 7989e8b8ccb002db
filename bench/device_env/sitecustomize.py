"""Emulates the GPU machine's Python on this one: only the packages that machine has, plus the carried wheels.

Put this folder first on PYTHONPATH with ``CMH_DEVICE_EMULATE=1`` (``bench/gpu_pass.py --emulate-device`` does;
spawned workers inherit it). The machine's Python holds torch, pyarrow, typer, rich, numba and timm and what they
require (``CMH_DEVICE_HAS`` overrides the list). At start-up this replaces the environment's site-packages on
``sys.path`` by a view of it (a folder of links, built once) holding only those distributions, so any other
third-party import fails as it would there, unless the carried wheels installed in a folder of PYTHONPATH
provide it, or ``CMH_DEVICE_CARRY`` names its distribution (the wheel list, to check it without the wheels).
Each import that nothing could satisfy is appended to ``CMH_DEVICE_BLOCKED_LOG`` as ``module<TAB>importer``
(the first file outside the import machinery): which imports the machine would miss, and where they come from
(an optional import its importer catches is listed too).
"""
from __future__ import annotations

import hashlib
import os
import re
import sys

DEFAULT_HAS = "torch,pyarrow,typer,rich,numba,timm,pip"


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def device_distributions(has: str = DEFAULT_HAS, carry: str = "") -> set[str]:
    """Normalised names of ``has`` and everything they require (extras left out), plus ``carry``."""
    import importlib.metadata as md

    from packaging.requirements import Requirement

    seen: set[str] = set()
    todo = [_norm(r) for r in has.split(",") if r.strip()]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = md.requires(name) or []
        except md.PackageNotFoundError:
            continue
        for text in requires:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(_norm(req.name))
    return seen | {_norm(c) for c in carry.split(",") if c.strip()}


def build_view(site: str, dest: str, allowed: set[str]) -> None:
    """``dest``: links to the entries of ``site`` that belong to ``allowed`` distributions only."""
    import importlib.metadata as md

    owners: dict[str, set[str]] = {}  # top-level entry -> distributions holding files in it
    second: dict[str, set[str]] = {}  # top-level entry -> its sub-entries the allowed distributions hold
    for dist in md.distributions(path=[site]):
        name = _norm(dist.metadata["Name"] or "")
        for f in dist.files or ():
            parts = f.parts
            if not parts or parts[0] in ("..", "__pycache__") or parts[0].endswith(".pth"):
                continue
            owners.setdefault(parts[0], set()).add(name)
            if name in allowed and len(parts) > 1:
                second.setdefault(parts[0], set()).add(parts[1])
    tmp = f"{dest}.partial{os.getpid()}"
    os.makedirs(tmp)
    for top, who in owners.items():
        src = os.path.join(site, top)
        if not os.path.exists(src) or not (who & allowed):
            continue
        if who <= allowed or not os.path.isdir(src):
            os.symlink(src, os.path.join(tmp, top))
        else:  # a folder shared with distributions the machine lacks (a namespace): only the allowed parts
            os.makedirs(os.path.join(tmp, top))
            for sub in second.get(top, ()):
                if os.path.exists(os.path.join(src, sub)):
                    os.symlink(os.path.join(src, sub), os.path.join(tmp, top, sub))
    try:
        os.rename(tmp, dest)
    except OSError:  # another process built it first
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)


class _Recorder:
    """Last on ``sys.meta_path``: asked only when no other finder found a module; writes its name down."""

    def __init__(self, log: str) -> None:
        self.log = log

    def find_spec(self, fullname, path=None, target=None):
        if "." in fullname or fullname in sys.stdlib_module_names:
            return None
        frame, importer = sys._getframe(1), "?"
        while frame is not None:
            file = frame.f_code.co_filename
            if "importlib" not in file and not file.startswith("<frozen") and file != __file__:
                importer = f"{file}:{frame.f_lineno}"
                break
            frame = frame.f_back
        with open(self.log, "a", encoding="utf-8") as fh:
            fh.write(f"{fullname}\t{importer}\n")
        return None


def _emulate() -> None:
    import site

    has = os.environ.get("CMH_DEVICE_HAS", DEFAULT_HAS)
    carry = os.environ.get("CMH_DEVICE_CARRY", "")
    sites = [p for p in site.getsitepackages() if os.path.isdir(p)]
    key = hashlib.sha256(f"{sys.prefix}|{has}|{carry}".encode()).hexdigest()[:12]
    views = []
    for s in sites:
        view = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"cmh-device-view-{os.getuid()}-{key}-{len(views)}")
        if not os.path.isdir(view):
            build_view(s, view, device_distributions(has, carry))
        views.append(view)
    sys.path[:] = [p for p in sys.path if p not in sites] + views
    for name in [m for m in sys.modules if m.split(".")[0] in ("importlib_metadata",)]:
        del sys.modules[name]
    if os.environ.get("CMH_DEVICE_BLOCKED_LOG"):
        sys.meta_path.append(_Recorder(os.environ["CMH_DEVICE_BLOCKED_LOG"]))


if os.environ.get("CMH_DEVICE_EMULATE") == "1":
    _emulate()
