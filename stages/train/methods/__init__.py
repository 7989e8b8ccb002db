"""Hashing methods. Each module registers one method; importing this package registers them all."""
from stages.train.methods import (  # noqa: F401  (explicit, so the registry is complete)
    baseline,
    cca_itq,
    ccah,
    cfrh,
    djsrh,
    dsah,
    dsprh,
    fjsph,
    ucmfh,
)
