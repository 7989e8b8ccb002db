"""Encoders. Each module registers one encoder kind; importing this package registers them all."""
from stages.extract.base import ENCODERS, Encoder, create_encoder, register_encoder

__all__ = ["ENCODERS", "Encoder", "create_encoder", "register_encoder", "load_encoders"]


def load_encoders() -> None:
    from stages.extract import alexnet, bow, clip  # noqa: F401
