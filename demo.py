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
    write_demo_page(out, runs, detector=out / "detector" / "detector.pth", device=device, echo=echo)
    echo(f"demo finished in {(time.time() - started) / 60:.1f} min")


def write_demo_page(out: Path, runs: dict[str, Path], *, detector: Path, videos: int = 4, device: str = "cpu",
                    echo: Callable[[str], None] = print) -> Path:
    """The demo's last step: the page of ``cli.py view`` (``out/view/page/index.html``) for the
    first ``videos`` test videos: each run evaluated (``eval --save-predictions``: hits and
    misses), side by side, and ``cli.py predict`` with the last run (RS-Net) on every frame of
    the first of them, its mp4 copied out of the dataset (``out/view/clips``)."""
    from stage1_detect.extract import ExtractConfig
    from stage1_detect.video_source import detect_videos, find_videos, read_document_frames
    from stage2_relations.scene_graphs import check_detector, load_sgdet_run, write_scene_graphs
    from stage2_relations.viewer import load_run, write_page

    view = out / "view"
    shutil.rmtree(view, ignore_errors=True)  # made afresh from this demo's runs
    shown = []
    for name, run_dir in runs.items():
        path = view / f"{run_dir.name}_test.npz"
        evaluate_checkpoint(run_dir=run_dir, split="test", max_videos=videos, save_predictions=path,
                            out_dir=view / "eval" / run_dir.name, device=device, echo=lambda line: None,
                            num_frames_png=0)
        shown.append(load_run(path, name))
    first = shown[0].documents[0]["video"]
    clips = view / "clips"
    clips.mkdir(parents=True)
    shutil.copy(out / "ag" / "videos" / first, clips / first)
    name, run_dir = list(runs.items())[-1]
    run = load_sgdet_run(run_dir, device=device)
    frame_detector, sha = load_detector(detector)
    check_detector(run, sha, frame_detector.describe().arch)
    paths = find_videos([clips / first])
    detect_videos(paths, view / "predict" / "detections.h5", frame_detector, weights_sha256=sha,
                  vocabulary=run.meta.vocabulary, union_mode=run.meta.union_mode.value,
                  config=ExtractConfig(num_workers=0, segment_mb=0), device=device, progress=False)
    write_scene_graphs(view / "predict" / "detections.h5", run, view / "predict", sources=paths, device=device,
                       progress=False)
    shown.append(load_run(view / "predict", f"{name}, every frame (predict)"))
    page = write_page(shown, view / "page", read_frames=read_document_frames, progress=False)
    echo(f"[page] scene graphs of {len(shown[0].documents)} test videos, {' | '.join(r.name for r in shown)}: open "
         f"{page.resolve().as_uri()}")
    return page
