"""The extract stage: encoders and the extraction loop.

Each encoder module (``alexnet``, ``bow``, ``clip``) registers one kind; ``factory.create_encoder``
builds one by kind or preset id, importing the kinds on first use.
"""
from stages.extract.base import ENCODERS, Encoder, register_encoder
from stages.extract.factory import create_encoder, list_encoders, load_encoders
from stages.extract.plan import ExtractSummary
from stages.extract.runner import run_extraction

__all__ = ["ENCODERS", "Encoder", "ExtractSummary", "create_encoder", "list_encoders", "load_encoders",
           "register_encoder", "run_extraction"]
