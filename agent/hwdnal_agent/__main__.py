"""``python -m hwdnal_agent stdio`` works like the ``hwdnal-agent`` command."""

from __future__ import annotations

import sys

from hwdnal_agent.cli import main

if __name__ == "__main__":
    sys.exit(main())
