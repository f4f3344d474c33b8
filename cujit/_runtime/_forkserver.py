"""Imported by the fork server of ``compile_modules``, and nowhere else: loads the compile worker and NVRTC there.

Workers are forked from that server, so each starts with both already loaded.
"""

from __future__ import annotations

from . import worker

worker.preload()
