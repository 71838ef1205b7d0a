"""Fusion modules: SDFN's dynamic fusion network and the static baselines, picked by name from one registry."""

from sdfn.fusion import baselines, dfn  # noqa: F401  (importing registers them)
from sdfn.fusion.base import (
    CELL_NAMES,
    Composition,
    FusionConfig,
    FusionModule,
    RouterTrace,
    create_fusion,
    list_fusions,
    register_fusion,
)

__all__ = ["CELL_NAMES", "Composition", "FusionConfig", "FusionModule", "RouterTrace", "create_fusion",
           "list_fusions", "register_fusion"]
