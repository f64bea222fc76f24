"""Imported first by every tool that imports `pretrain` (directly or through `transfer`).

Python puts a script's folder first on the import path, and tools/pretrain.py (the entry point
the docs name) would then shadow the `pretrain` package. Removing tools/ from the path fixes it.
"""

import os
import sys

_TOOLS = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _TOOLS]
