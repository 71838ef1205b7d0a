"""Where sdfn finds what it ships and where it writes what it generates, installed or in a source checkout.

Shipped with the package (read-only, found wherever sdfn is installed):
- `SHIPPED_CHECKPOINT`: the demo model, sdfn/assets/sdfn-tiny;
- `PRESET_DIR`: training presets, sdfn/configs/*.json (`sdfn train --config NAME`);
- sdfn/model_configs/*.json: open_clip architectures (sdfn.backbone registers them).

Generated (writable): the default synthetic catalog, `sdfn_home() / "catalogs" / "synthetic"`, where
`sdfn_home()` is `$SDFN_HOME` when set, else the source checkout's root when sdfn runs from one (so a clone
keeps its catalogs/ beside the code, as before), else the user cache folder (`$XDG_CACHE_HOME/sdfn`, by default
`~/.cache/sdfn`).
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
SHIPPED_CHECKPOINT = PACKAGE_DIR / "assets" / "sdfn-tiny"
PRESET_DIR = PACKAGE_DIR / "configs"
DEFAULT_CATALOG_NAME = "synthetic"


def source_checkout() -> Path | None:
    """The repository root when this sdfn is imported from a source checkout (not an installed copy)."""
    root = PACKAGE_DIR.parent
    pyproject = root / "pyproject.toml"
    if pyproject.is_file() and 'name = "sdfn"' in pyproject.read_text(encoding="utf-8", errors="replace"):
        return root
    return None


def sdfn_home() -> Path:
    """The folder generated data goes to: $SDFN_HOME, else the source checkout, else the user cache folder."""
    if os.environ.get("SDFN_HOME"):
        return Path(os.environ["SDFN_HOME"]).expanduser().resolve()
    checkout = source_checkout()
    if checkout is not None:
        return checkout
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return (cache / "sdfn").resolve()


def default_catalog() -> Path:
    """The default catalog (generated with seed 0 the first time it is needed)."""
    return sdfn_home() / "catalogs" / DEFAULT_CATALOG_NAME
