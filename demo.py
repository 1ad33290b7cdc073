"""The demo (``make demo``, ``cli.py demo``): the whole pipeline on synthetic Action Genome,
each step the library call behind one command. Its steps are listed once, in the help of
``cli.py demo`` (``python cli.py demo --help``)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Callable, Sequence

from common.errors import UserError
from pipeline import predict_scene_graphs
from rules.modes import Mode
from stage1_detect.action_genome import ReaderOptions, describe, load_action_genome
from stage1_detect.detectors import load_detector
from stage1_detect.extract import ExtractConfig, extract
from stage1_detect.train_detector import DetectorTrainConfig, train_detector
from stage2_relations.eval_request import EvalRequest
from stage2_relations.evaluate_checkpoint import evaluate_checkpoint
from stage2_relations.reproduce import load_published, load_recipe_set, only_rows, plan_tables, run_reproduction
from stage2_relations.reproduce_report import format_markdown, write_outputs
from store import check_store
from store.stats import stats, summary
from synth import SynthConfig, generate_synthetic_ag


def run_demo(out: Path, *, videos: int = 80, seed: int = 0, detector_epochs: int = 8, device: str = "cpu",
             seeds: Sequence[int] = (0, 1, 2), epochs: int | None = None,
             echo: Callable[[str], None] = print) -> None:
    """Run every step into the folder ``out`` (``ag/``, ``detector/``, ``store.h5``, ``runs/``),
    printing one line or table per step through ``echo``. ``device`` is resolved ('cpu', 'cuda');
    ``seed`` drives the data and the detector, ``seeds`` the relation heads (STTran and
    STTran + RS-Net, each over every seed), ``epochs`` their epochs (None: the recipes')."""
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

    # [6/7] and [7/7]: Table 2's STTran rows over seeds, through `reproduce` (compare's runs)
    run_root = out / "runs"
    shutil.rmtree(run_root, ignore_errors=True)  # runs of an older store must not be reused
    table = only_rows(load_published()[2], ("sttran", "sttran_rsnet"))
    overrides = {"store": str(store_path), "device": device, "epochs": epochs}
    plan = plan_tables([2], load_recipe_set("small"), run_root, overrides, published={2: table})
    t0 = time.time()

    def progress(line: str) -> None:  # one line per run: the rest is in each run folder
        if " trained " in line:
            echo("[6/7] " + line.removeprefix("[Table 2] "))

    results = run_reproduction(plan, seeds, progress=False, echo=progress)
    echo(f"[6/7] trained and evaluated {len(plan[0][2])} variants x {len(seeds)} seeds in "
         f"{(time.time() - t0) / 60:.1f} min -> {plan[0][1]}")
    report = format_markdown(results, ["SGDET, the tiny demo recipes (configs/demo_sttran*.yaml, "
                                       f"{plan[0][2][0].config.epochs} epochs); `cli.py reproduce` for every table"])
    paths = write_outputs(results, run_root, report)
    echo(f"[7/7] {report}(and {', '.join(p.name for p in paths.values())} in {run_root})")
    # the page: the first seed's runs of both variants
    runs = {name: plan[0][1] / variant / f"seed{seeds[0]}"
            for name, variant in (("STTran", "sttran"), ("STTran + RS-Net", "sttran_rsnet"))}
    write_demo_page(out, runs, detector=out / "detector" / "detector.pth", device=device, echo=echo)
    echo(f"demo finished in {(time.time() - started) / 60:.1f} min")


def write_demo_page(out: Path, runs: dict[str, Path], *, detector: Path, videos: int = 4, device: str = "cpu",
                    echo: Callable[[str], None] = print) -> Path:
    """The demo's last step: the page of ``cli.py view`` (``out/view/page/index.html``) for the
    first ``videos`` test videos: each run evaluated (``eval --save-predictions``: hits and
    misses), side by side, and ``cli.py predict`` with the last run (RS-Net) on every frame of
    the first of them, its mp4 copied out of the dataset (``out/view/clips``)."""
    from stage1_detect.video_source import find_videos, read_document_frames
    from stage2_relations.scene_graphs import load_sgdet_run
    from stage2_relations.viewer import load_run, write_page

    view = out / "view"
    shutil.rmtree(view, ignore_errors=True)  # made afresh from this demo's runs
    shown = []
    for name, run_dir in runs.items():
        tag = f"{run_dir.parent.name}_{run_dir.name}"  # variant_seedK
        path = view / f"{tag}_test.npz"
        evaluate_checkpoint(EvalRequest(run_dir=run_dir, split="test", max_videos=videos, save_predictions=path,
                                        out_dir=view / "eval" / tag, device=device),
                            echo=lambda line: None, num_frames_png=0)
        shown.append(load_run(path, name))
    first = shown[0].documents[0]["video"]
    clips = view / "clips"
    clips.mkdir(parents=True)
    shutil.copy(out / "ag" / "videos" / first, clips / first)
    name, run_dir = list(runs.items())[-1]
    run = load_sgdet_run(run_dir, device=device)
    frame_detector, sha = load_detector(detector)
    predict_scene_graphs(find_videos([clips / first]), view / "predict", run, frame_detector, weights_sha256=sha,
                         config=ExtractConfig(num_workers=0, segment_mb=0), device=device, progress=False)
    shown.append(load_run(view / "predict", f"{name}, every frame (predict)"))
    page = write_page(shown, view / "page", read_frames=read_document_frames, progress=False)
    echo(f"[page] scene graphs of {len(shown[0].documents)} test videos, {' | '.join(r.name for r in shown)}: open "
         f"{page.resolve().as_uri()}")
    return page
