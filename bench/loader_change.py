"""The loader before and after issue 12's change to RS-Net's negative sampling, on the same
AG-sized records, alternated in one process: ``loader_throughput`` of ``bench/loader_speed.py``
with the earlier ``sample_negatives`` (kept verbatim in ``tests/stage2_relations/test_loader_reference.py``, which
also shows that both give the same batches bit for bit) and with the current one.

    python bench/loader_change.py          # about 1 minute on 2 cores
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stage2_relations.views as views  # noqa: E402
from bench.loader_speed import loader_throughput, write_ag_sized_store  # noqa: E402
from tests.stage2_relations.test_loader_reference import reference_sample_negatives  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    current = views.sample_negatives
    figures: dict[str, list[float]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_ag_sized_store(Path(tmp) / "ag_sized.h5", 100)
        for _ in range(3):
            for name, fn in (("before", reference_sample_negatives), ("after", current)):
                views.sample_negatives = fn
                figures[name].append(loader_throughput(path, 3)["frames_per_cpu_s"])
    views.sample_negatives = current
    for name, xs in figures.items():
        print(f"{name}: {', '.join(f'{x:,.0f}' for x in xs)} frames per CPU second")


if __name__ == "__main__":
    main()
