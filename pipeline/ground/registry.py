"""A small name -> builder registry, shared by methods, encoders and dataset sources.

Modelled on timm's ``register_model`` and open_clip's model factory: an entry is registered by
decorating its builder, names are normalised on lookup, and an unknown name fails early with the
closest match and the full list.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Iterable, Mapping, TypeVar

from pipeline.ground.errors import ConfigError

T = TypeVar("T")

_SAFE = re.compile(r"^[a-z0-9][a-z0-9.\-]*$")


def normalise_name(name: str) -> str:
    """Lower-case, with ``_`` and ``/`` turned into ``-`` (open_clip does the same for ``/``)."""
    return name.strip().lower().replace("_", "-").replace("/", "-")


class UnsafeNameError(ConfigError, ValueError):
    """A name that cannot be a directory; a ConfigError, so the CLI prints it as one line."""


def check_path_safe(name: str) -> str:
    """Ids become partition directories (``encoder=<id>``), so they must be path-safe."""
    if not _SAFE.match(name):
        raise UnsafeNameError(f"name {name!r} is not path-safe: use lowercase letters, digits, '.', '-' only")
    return name


def _natural_key(s: str) -> list:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


@dataclass
class Entry(Generic[T]):
    name: str
    builder: T
    config: type | None = None
    #: Encoder variants: an encoder id -> the options that produce it (``clip-vit-b-32.openai``).
    variants: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: Method presets per dataset: a dataset -> its paper's overrides (``mirflickr``).
    dataset_presets: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    summary: str = ""
    module: str = ""
    aliases: tuple[str, ...] = ()
    extra: Mapping[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Maps canonical names (and aliases) to entries."""

    def __init__(self, kind: str, list_command: str) -> None:
        self.kind = kind
        self.list_command = list_command
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        self._deprecated: dict[str, str] = {}

    def register(
        self,
        name: str,
        *,
        config: type | None = None,
        variants: Mapping[str, Mapping[str, Any]] | None = None,
        dataset_presets: Mapping[str, Mapping[str, Any]] | None = None,
        aliases: Iterable[str] = (),
        **extra: Any,
    ) -> Callable[[T], T]:
        canonical = check_path_safe(normalise_name(name))

        def decorator(builder: T) -> T:
            if canonical in self._entries or canonical in self._aliases:
                raise ValueError(f"{self.kind} {canonical!r} is registered twice")
            doc = (getattr(builder, "__doc__", None) or "").strip().splitlines()
            self._entries[canonical] = Entry(
                name=canonical,
                builder=builder,
                config=config,
                variants=dict(variants or {}),
                dataset_presets=dict(dataset_presets or {}),
                summary=doc[0] if doc else "",
                module=getattr(builder, "__module__", ""),
                aliases=tuple(normalise_name(a) for a in aliases),
                extra=dict(extra),
            )
            for alias in aliases:
                self._aliases[normalise_name(alias)] = canonical
            return builder

        return decorator

    def deprecate(self, old: str, new: str) -> None:
        """Keep a renamed id working, with a warning on use."""
        self._deprecated[normalise_name(old)] = normalise_name(new)

    def resolve(self, name: str) -> str:
        key = normalise_name(name)
        if not key:  # METHOD= or --method '': say it is missing, not "unknown ''"
            raise KeyError(f"no {self.kind} given (an empty name); give one of those registered: {', '.join(self.names())} "
                           f"(list them with: {self.list_command})")
        if key in self._deprecated:
            new = self._deprecated[key]
            warnings.warn(f"{self.kind} {name!r} was renamed to {new!r}", DeprecationWarning, stacklevel=3)
            key = new
        key = self._aliases.get(key, key)
        if key not in self._entries:
            known = self.names()
            close = difflib.get_close_matches(key, known + list(self._aliases), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise KeyError(
                f"unknown {self.kind} {name!r}{hint} registered: {', '.join(known)} "
                f"(list them with: {self.list_command})"
            )
        return key

    def get(self, name: str) -> Entry[T]:
        return self._entries[self.resolve(name)]

    def __contains__(self, name: str) -> bool:
        try:
            self.resolve(name)
        except KeyError:
            return False
        return True

    def names(self, pattern: str = "*") -> list[str]:
        return sorted((n for n in self._entries if fnmatch.fnmatch(n, pattern)), key=_natural_key)

    def entries(self, pattern: str = "*") -> list[Entry[T]]:
        return [self._entries[n] for n in self.names(pattern)]
