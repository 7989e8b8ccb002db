"""The engine options that ``cmh extract`` and ``cmh encode`` share, checked before any work starts."""
from __future__ import annotations

import logging

from pipeline.ground.errors import ConfigError

log = logging.getLogger(__name__)

ENGINES = ("local", "ray")


def check_engine_options(engine: str, *, ray_address: str | None, concurrency: int | None, device: str | None,
                         local_only: dict[str, object] | None = None, ray_device_option: bool = True) -> None:
    """One-line errors for options that do not go with ``engine``, and a reachable Ray address.

    ``local_only`` maps a flag (``--workers``) to its value when it applies to the local engine alone.
    ``ray_device_option``: the command's ``--device`` is for Ray actors only (``cmh encode``)."""
    if engine not in ENGINES:
        raise ConfigError(f"--engine {engine!r}: choose local or ray")
    if engine == "local":
        flags = [f for f, v in (("--concurrency", concurrency), ("--device", device if ray_device_option else None))
                 if v is not None]
        if flags:
            hint = ("--workers sets the local loader processes" if local_only else
                    "the local engine codes on the CPU of this process")
            raise ConfigError(f"{' and '.join(flags)}: these options go with --engine ray ({hint})")
        if ray_address:  # RAY_ADDRESS may be set in the shell of a cluster node
            log.info("--engine local: the Ray address %s is not used", ray_address)
        return
    for flag, value in (local_only or {}).items():
        if value is not None:
            raise ConfigError(f"{flag} is for --engine local; with --engine ray the work runs in Ray tasks")
    if device not in (None, "cpu", "cuda"):
        raise ConfigError(f"--device {device!r}: with --engine ray give cuda or cpu (each actor gets its own GPU)")
    if concurrency is not None and concurrency < 1:
        raise ConfigError(f"--concurrency must be >= 1, got {concurrency}")
    if ray_address:
        from stages.extract.ray_engine import check_reachable

        check_reachable(ray_address)  # before anything is read: a wrong address fails in seconds
