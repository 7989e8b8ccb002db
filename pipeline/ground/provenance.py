"""Versions, git revision and machine facts stored next to every artifact."""
from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from typing import Any

from pipeline.ground.settings import PROJECT_ROOT

_PACKAGES = ("torch", "torchvision", "open_clip_torch", "timm", "numpy", "pyarrow", "duckdb", "faiss-cpu",
             "numba", "scipy")


def package_versions(names: tuple[str, ...] = _PACKAGES) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def git_revision() -> str:
    """The checkout's short revision (``-dirty`` with changes); where there is no git repository (the GPU
    pass's copy of the working tree), ``$CMH_GIT_REVISION`` as given, else ``unknown``."""
    fallback = os.environ.get("CMH_GIT_REVISION", "").strip() or "unknown"
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=PROJECT_ROOT, capture_output=True,
                             text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=PROJECT_ROOT,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return (rev + ("-dirty" if dirty else "")) if rev else fallback
    except (OSError, subprocess.SubprocessError):
        return fallback


def environment() -> dict[str, Any]:
    from pipeline.ground.versions import __version__

    env: dict[str, Any] = {"cmh": __version__, "git": git_revision(), "python": platform.python_version(),
                           "platform": platform.platform(), "machine": platform.machine(),
                           "packages": package_versions()}
    try:
        import torch

        env["torch_threads"] = torch.get_num_threads()
        env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        pass
    return env


def hardware() -> str:
    """One line naming what trained a run: the GPU when CUDA is used, else the CPU model and threads."""
    try:
        import torch

        if torch.cuda.is_available():
            return f"{torch.cuda.get_device_name(0)} (CUDA)"
        threads = torch.get_num_threads()
    except ImportError:
        threads = 0
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            model = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), model)
    except OSError:
        pass
    return f"{model} ({threads} torch threads)"


def file_sha256(path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks (weights files are recorded and checked by it)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()
