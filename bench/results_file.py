"""How every benchmark saves its figures: the JSON of ``bench/results/``, with the command as
typed and the machine it ran on (``bench/report.py`` builds the README's table from them)."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any


def save_results(out: str | Path, payload: dict[str, Any]) -> Path:
    """Write ``payload`` plus the command line, cores, load average and platform to ``out``."""
    script = Path(sys.argv[0]).name
    payload = {**payload, "command": " ".join([f"python bench/{script}"] + sys.argv[1:]),
               "cores": len(os.sched_getaffinity(0)), "load_average": os.getloadavg(), "machine": platform.platform()}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    return out
