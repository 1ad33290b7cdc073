"""The demo (``make demo``, ``cli.py demo``): the whole pipeline on synthetic Action Genome,
each step the library call behind one command. Its steps are listed once, in the help of
``cli.py demo`` (``python cli.py demo --help``)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable

from stage1_detect.action_genome import ReaderOptions, describe, load_action_genome
from stage1_detect.detectors import load_detector
from stage1_detect.extract import ExtractConfig, extract
from stage1_detect.train_detector import DetectorTrainConfig, train_detector
from stage2_relations.compare import format_table2, table_row
from stage2_relations.evaluate_checkpoint import evaluate_checkpoint
from stage2_relations.recipe import load_config
from stage2_relations.train import train
from store import check_store
from store.errors import UserError
from store.stats import stats, summary
from store.modes import Mode
from synth import SynthConfig, generate_synthetic_ag


def run_demo(out: Path, *, videos: int = 80, seed: int = 0, detector_epochs: int = 8, device: str = "cpu",
             echo: Callable[[str], None] = print) -> None:
    """Run every step into the folder ``out`` (``ag/``, ``detector/``, ``store.h5``, ``runs/``),
    printing one line or table per step through ``echo``. ``device`` is resolved ('cpu', 'cuda')."""
    started = time.time()
    root = out / "ag"
    synth_summary = generate_synthetic_ag(root, SynthConfig(videos=videos, seed=seed))
    echo(f"[1/7] synthesised {synth_summary.videos} videos, {synth_summary.frames} frames in "
         f"{synth_summary.seconds:.1f}s -> {root}")
    # 10% of the train videos (about 5 of the default 80) for validation.
    reader = {"val_fraction": 0.1, "val_seed": seed}
    for mode in (Mode.PREDCLS, Mode.SGDET):
        echo(f"[2/7] reader, {mode.value}:")
        echo(describe(load_action_genome(root, ReaderOptions.for_mode(mode, **reader))))

    recipe = Path(__file__).parent / "configs" / "detector_small.yaml"
    config = DetectorTrainConfig.from_yaml(recipe, epochs=detector_epochs, seed=seed, **reader)
    result = train_detector(root, out / "detector", config, device=device)
    val = f"val mAP@0.5 {result.val.map:.3f}" if result.val else "no validation frames"
    echo(f"[3/7] trained the small detector: {config.epochs} epochs in {result.seconds / 60:.1f} min, {val}")

    store_path = out / "store.h5"
    if store_path.exists():  # the detector changed: a store of the old one must not be resumed
        shutil.rmtree(store_path)
    detector, sha = load_detector(result.checkpoint)
    summary_line = extract(root, store_path, detector, weights_sha256=sha,
                           reader_options=ReaderOptions(**reader), config=ExtractConfig(), device=device).line()
    echo(f"[4/7] {summary_line}")

    problems = check_store(store_path)
    if problems:
        raise UserError("store check failed:\n" + "\n".join(map(str, problems)))
    echo("[5/7] store check ok; statistics:")
    echo(summary(stats(store_path)))

    runs = {}
    for name, recipe in (("STTran", "demo_sttran.yaml"), ("STTran + RS-Net", "demo_sttran_rsnet.yaml")):
        run_dir = out / "runs" / recipe.removesuffix(".yaml")
        shutil.rmtree(run_dir, ignore_errors=True)  # the demo's own run: start it afresh
        cfg = load_config(Path(__file__).parent / "configs" / recipe,
                          {"store": str(store_path), "seed": seed, "device": device})
        result = train(cfg, run_dir, progress=False, echo=lambda line: None)
        runs[name] = run_dir
        echo(f"[6/7] trained {name} ({cfg.mode.upper()}, {len(result['history'])} epochs, "
             f"{result['parameters'] / 1e6:.2f} M parameters): best val R@20 {100 * result['best_r20']:.1f}")
    rows = []
    for name, run_dir in runs.items():
        echo(f"[7/7] {name}, test split:")
        rows.append(table_row(name, evaluate_checkpoint(run_dir=run_dir, split="test", device=device, echo=echo)))
    echo(format_table2(rows, reference="STTran",
                       title="SGDET, test split, with constraint (as the RS-Net paper's Table 2; one seed: "
                             "an anecdote, see `cli.py compare` for seeds)"))
    echo(f"demo finished in {(time.time() - started) / 60:.1f} min")
