"""Command-line entry point: ``python cli.py COMMAND`` or, once installed, ``dsgg COMMAND``.

Thin by design: every command parses its options and calls an importable function.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
def main(verbose: int) -> None:
    """Dynamic scene graph generation on Action Genome from a cached feature store.

    Stage 1 runs a detector once over every frame and writes a feature store; stage 2
    trains and evaluates relation heads from that store.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# --- dataset commands ---------------------------------------------------------------


# --- store commands -----------------------------------------------------------------


# --- evaluation commands ------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
