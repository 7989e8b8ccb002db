"""Encoders and the extraction loop. Each encoder module registers one kind; ``load_encoders()``
(called by ``create_encoder``/``list_encoders``) imports them all."""
from stages.extract.base import ENCODERS, Encoder, create_encoder, list_encoders, register_encoder
from stages.extract.plan import ExtractSummary
from stages.extract.runner import run_extraction

__all__ = ["ENCODERS", "Encoder", "ExtractSummary", "create_encoder", "list_encoders", "load_encoders",
           "register_encoder", "run_extraction"]


def load_encoders() -> None:
    # explicit imports, so listing is complete without scanning the disk
    from stages.extract import alexnet, bow, clip  # noqa: F401
