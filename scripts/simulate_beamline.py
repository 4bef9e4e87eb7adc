#!/usr/bin/env python3
"""The beamline simulator: the same as ``nexus-writer simulate``.

Example: ``scripts/simulate_beamline.py --embedded --mca "ascan robx 0 1 10 0.01"``
"""

import sys

from nexus_writer.cli import main

if __name__ == "__main__":
    sys.exit(main(["simulate", *sys.argv[1:]]))
