"""Where profiled LUTs live: a per-user cache, not the checkout.

A LUT is a fact about one machine (its CPU or GPU, clock, runtime), so it belongs beside
the user's other caches, never in a git tree where a demo run would rewrite a tracked file.
``HWDNAL_PROFILES_DIR`` overrides the folder; otherwise ``$XDG_CACHE_HOME/hwdnal/profiles``
(``~/.cache/hwdnal/profiles`` when XDG_CACHE_HOME is unset).
"""

from __future__ import annotations

import os
from pathlib import Path

ENVIRONMENT_VARIABLE = "HWDNAL_PROFILES_DIR"


def profiles_folder() -> Path:
    """The folder that default LUT paths (and their measurement cache) live in."""
    chosen = os.environ.get(ENVIRONMENT_VARIABLE)
    if chosen:
        return Path(chosen).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache).expanduser() / "hwdnal" / "profiles"
