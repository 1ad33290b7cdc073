"""Command-line entry point: ``python cli.py COMMAND`` or, once installed, ``dsgg COMMAND``.

Thin by design: every command parses its options and calls an importable function.

Over 500 lines on purpose: every command's options in one file, the whole command-line surface
in one place (``python cli.py --help``); no command body does more than parse, call and print.
"""

from __future__ import annotations

import enum
import logging
import os
import sys
from pathlib import Path

import click

from rules.modes import Mode
from rules.pairing import SgdetBoxes
from stage2_relations.view_options import ObjectScores

MODE_CHOICE = click.Choice([m.value for m in Mode])
"""The task modes, as ``--mode`` takes them."""


def _choice(kind: type[enum.Enum]) -> click.Choice:
    """The values of a ``str`` enum of options, as an option takes them."""
    return click.Choice([m.value for m in kind])


def _user_error(e: Exception) -> bool:
    """Errors that describe bad input or a problem of the machine (a full disk), and name the
    file: shown as one line, not a traceback (common.errors.UserError and its subclasses:
    StoreError, AnnotationError, FrameError, CheckpointError, ConfigError, InputError,
    LockedError, RunMismatch)."""
    from common.errors import UserError

    return isinstance(e, (UserError, OSError, EOFError))


def _one_line(e: Exception) -> str:
    if isinstance(e, EOFError):  # not the user's Ctrl-D: a file that ends too early
        return f"unexpected end of a file ({e or 'EOFError'}): a truncated or empty input?"
    if isinstance(e, OSError) and not isinstance(e, (FileNotFoundError, FileExistsError)):
        from common.files import describe_os_error

        return f"{e.filename + ': ' if e.filename else ''}{describe_os_error(e)}"
    return str(e)


class Cli(click.Group):
    """The one error path of every command: a user error becomes one line and exit code 1
    (``-vv``: the traceback); anything else is a bug and keeps its traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except Exception as e:
            if _user_error(e) and logging.getLogger().level > logging.DEBUG:
                raise click.ClickException(_one_line(e)) from e
            if isinstance(e, EOFError):  # click would print "Aborted!" and hide it
                raise RuntimeError(_one_line(e)) from e
            raise


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug: tracebacks too).")
def main(verbose: int) -> None:
    """Dynamic scene graph generation on Action Genome from a cached feature store.

    Stage 1 runs a detector once over every frame and writes a feature store; stage 2
    trains and evaluates relation heads from that store.
    """
    level = logging.WARNING if verbose == 0 else logging.INFO if verbose == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")


# --- dataset commands ---------------------------------------------------------------


def _apply(command, options):
    for option in reversed(options):
        command = option(command)
    return command


def _split_options():
    """The reader's options that `dataset` and `detect` share: the split and the strictness."""
    return [
        click.option("--val-fraction", type=click.FloatRange(0.0, 1.0, max_open=True), default=0.05, show_default=True,
                     help="Fraction of train videos held out as validation."),
        click.option("--val-seed", type=int, default=0, show_default=True, help="Seed of the validation draw."),
        click.option("--min-frames", type=click.IntRange(min=1), default=3, show_default=True,
                     help="Drop videos with fewer kept frames (the baselines keep videos with more than 2)."),
        click.option("--strict", is_flag=True,
                     help="Fail on a visible object without a usable box instead of skipping and counting it."),
    ]


def reader_options(command):
    """The Action Genome reader's filters as options (`dataset`)."""
    return _apply(command, [
        click.option("--mode", type=MODE_CHOICE, default="predcls", show_default=True,
                     help="Task mode; sgcls and sgdet read the _filtersmall annotations, as the baselines do."),
        *_split_options(),
        click.option("--keep-frames-without-person", is_flag=True,
                     help="Keep frames in which the person detector found no box (the baselines drop them)."),
    ])


def _reader_options(mode, val_fraction, val_seed, min_frames, keep_frames_without_person, strict):
    from stage1_detect.action_genome import ReaderOptions

    return ReaderOptions.for_mode(
        mode, val_fraction=val_fraction, val_seed=val_seed, min_frames=min_frames,
        require_person_box=not keep_frames_without_person, on_bad_object="error" if strict else "skip",
    )


def _reject_mode(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    if value is not None:
        raise click.UsageError(f"detect takes no --mode: one extraction serves every mode (the store marks the "
                               f"objects absent from _filtersmall); choose the mode in stage 2 (train --mode {value}).")


def _reject_frames_without_person(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    if value:
        raise click.UsageError("detect takes no --keep-frames-without-person: every stored frame needs its person "
                               "box (the subject of every GT pair).")


def extraction_reader_options(command):
    """The reader's options of `detect`: the full annotations with the small objects marked,
    so there is no --mode, and every frame needs a person (given, either is an error that
    says so)."""
    return _apply(command, [
        *_split_options(),
        click.option("--mode", hidden=True, expose_value=False, callback=_reject_mode),
        click.option("--keep-frames-without-person", is_flag=True, hidden=True, expose_value=False,
                     callback=_reject_frames_without_person),
    ])


def _extraction_reader_options(val_fraction, val_seed, min_frames, strict):
    from stage1_detect.action_genome import ReaderOptions

    return ReaderOptions(val_fraction=val_fraction, val_seed=val_seed, min_frames=min_frames,
                         on_bad_object="error" if strict else "skip")


def _parse_size(ctx: click.Context, param: click.Parameter, size: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT, e.g. 320x240, got {size!r}", param_hint="--size")
    return width, height


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the dataset into (created; existing files are overwritten).")
@click.option("--videos", type=click.IntRange(min=1), default=40, show_default=True, help="Number of videos.")
@click.option("--frames", type=click.IntRange(min=3), default=16, show_default=True,
              help="Annotated frames per video (some videos keep only 2, an edge case of the filters).")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--size", default="320x240", show_default=True, callback=_parse_size, help="Frame size WIDTHxHEIGHT.")
@click.option("--no-png", is_flag=True, help="Skip the frames/ PNG dump (videos/*.mp4 only).")
def synth(out: Path, videos: int, frames: int, seed: int, size: tuple[int, int], no_png: bool) -> None:
    """Write a synthetic dataset in the exact Action Genome layout.

    Frames, videos, both annotation pickles (and _filtersmall), the class files and
    frame_list.txt, with the edge cases the reader's filters exist for. Deterministic
    for a seed.
    """
    from synth import SynthConfig, generate_synthetic_ag

    width, height = size
    config = SynthConfig(videos=videos, frames_per_video=frames, width=width, height=height, seed=seed,
                         write_png=not no_png)
    summary = generate_synthetic_ag(out, config)
    click.echo(f"synth: {summary.videos} videos, {summary.frames} frames, {summary.objects} objects, "
               f"{summary.relations} relations in {summary.seconds:.1f}s -> {summary.root}")


@main.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@reader_options
def dataset(root: Path, **options) -> None:
    """Read an Action Genome root and print what the reader found.

    ROOT holds annotations/ (and frames/, videos/). Prints videos, frames, objects and
    relations per split and what each filter removed; on real AG with the defaults, train
    has 7,584 videos and 177,330 frames before the validation split is taken out.
    """
    from stage1_detect.action_genome import describe, load_action_genome

    click.echo(describe(load_action_genome(root, _reader_options(**options))))


# --- detector commands ------------------------------------------------------------


def _device(device: str) -> str:
    from common.errors import ConfigError
    from common.runtime import resolve_device

    try:  # a device this machine lacks or torch does not know: a usage error, before any work
        resolved = resolve_device(device)
    except ConfigError as e:
        raise click.BadParameter(str(e), param_hint="--device") from None
    return device if device != "auto" else str(resolved)


DEVICE_OPTION = click.option("--device", default="auto", show_default=True,
                             help="'cpu', 'cuda', 'cuda:1', or 'auto' (CUDA when present).")
THREADS_OPTION = click.option("--threads", type=click.IntRange(min=0), default=None,
                              help="torch threads (default: the idle cores this process may use, less one per "
                                   "DataLoader worker; common/threads.py). Results differ slightly with it: "
                                   "it is printed and recorded.")


def _torch_threads(threads: int | None, num_workers: int = 0) -> int:
    """The one way a command sets torch's threads: common.threads.torch_threads (``threads``, else
    the default beside ``num_workers`` DataLoader workers) for the rest of the command, restored
    when it ends, even by an error. Returns the count, for the command to print or record."""
    from common.threads import torch_threads

    return click.get_current_context().with_resource(torch_threads(threads, num_workers))


@main.command("train-detector")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: detector.pth, last.pth (for --resume), log.csv/.json, config.yaml, run.json, val_map.json.")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML recipe (configs/detector_*.yaml); options below override it.")
@click.option("--arch", help="Architecture: small, r50-fpn or r101-c4 (default: the recipe's, else small).")
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--batch-size", type=click.IntRange(min=1))
@click.option("--lr", type=float, help="Peak learning rate of AdamW.")
@click.option("--backbone-weights", type=click.Path(exists=True, dir_okay=False),
              help="ImageNet classification weights (torchvision ResNet .pth) for the backbone.")
@click.option("--init-weights", type=click.Path(exists=True, dir_okay=False),
              help="A detection checkpoint to start from (e.g. torchvision COCO); mismatched layers are skipped.")
@click.option("--frames", "frame_source", type=click.Choice(["auto", "png", "mp4"]),
              help="Read frames/ PNGs or decode videos/*.mp4 (auto: PNGs when present).")
@click.option("--workers", "num_workers", type=click.IntRange(min=0), help="DataLoader workers.")
@click.option("--seed", type=int)
@click.option("--resume", is_flag=True, help="Continue from OUT/last.pth, exactly where it stopped (same settings).")
@click.option("--overwrite", is_flag=True, help="Replace the run in OUT (its files only) by a new one.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Read OUT/last.pth with full pickle (runs code from the file: only for a file you trust).")
@DEVICE_OPTION
def train_detector_command(root: Path, out: Path, config_path: Path | None, device: str, resume: bool,
                           overwrite: bool, trust_checkpoint: bool, **overrides):
    """Train or fine-tune a detector on the frames and boxes of an AG root.

    Starts from ImageNet backbone weights or a detection checkpoint when given (local
    paths; nothing is downloaded), otherwise from scratch. Ends with mAP@0.5 on the
    validation split. The result, OUT/detector.pth, is what `detect --weights` takes.
    """
    from common.training_run import resume_recipe
    from stage1_detect.train_detector import DetectorTrainConfig, train_detector

    config = DetectorTrainConfig.from_yaml(resume_recipe(out, config_path, resume=resume), **overrides)
    result = train_detector(root, out, config, device=_device(device), resume=resume, overwrite=overwrite,
                            trust_checkpoint=trust_checkpoint)
    val = f"val mAP@0.5 {result.val.map:.3f}" if result.val else "no validation frames"
    click.echo(f"train-detector: {config.arch}, {result.epochs} epochs, final loss {result.final_loss:.4f}, "
               f"{val}, {result.seconds / 60:.1f} min -> {result.checkpoint}")


def _backend_help() -> str:
    from stage1_detect.detector_backends import DETECTOR_BACKENDS

    return "Detector library: " + "; ".join(f"{b.name}, {b.description}" for b in DETECTOR_BACKENDS.values()) + "."


def detector_options(command):
    """The detector's options that `detect` and `predict` share (every backend's; the backends
    and what each reads are stage1_detect.detector_backends')."""
    from stage1_detect.detector_backends import DETECTOR_BACKENDS

    return _apply(command, [
        click.option("--arch", help="Architecture of a bare torchvision state dict (small, r50-fpn, r101-c4)."),
        click.option("--backend", type=click.Choice(list(DETECTOR_BACKENDS)), default=next(iter(DETECTOR_BACKENDS)),
                     show_default=True, help=_backend_help()),
        click.option("--config", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="detectron2 config (yacs YAML, e.g. a model zoo faster_rcnn_*.yaml); --backend detectron2 "
                          "only."),
        click.option("--class-map", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     help="YAML: detectron2 model class (name or index) -> AG object or null, for a model whose "
                          "classes are not AG's 36; --backend detectron2 only."),
        click.option("--nms-space", type=click.Choice(["original", "resized"]),
                     help="Per-class NMS on boxes in original-frame pixels (STTran; the checkpoint's setting when not given) "
                          "or in the resized image's (torchvision)."),
        click.option("--max-detections", type=click.IntRange(min=0),
                     help="Keep at most this many detections a frame, best first (STTran: 0, every one)."),
        click.option("--clip", type=click.Choice(["sttran", "all"]),
                     help="Clip the boxes of the first frame of each of STTran's chunks of 10 only (sttran), or of all."),
        click.option("--scale", "box_scale", type=click.Choice(["one", "per-axis"]),
                     help="Map boxes to the original frame by one scale (STTran) or by one ratio per axis."),
        click.option("--detection-order", type=click.Choice(["class", "score"]),
                     help="Store a frame's detections class by class, each by score (STTran), or by score."),
    ])


def _load_detector(backend: str, weights: Path, vocabulary, options: dict):
    """(detector, weights sha256) of ``backend`` (stage1_detect.detector_backends) with the
    `detector_options` given in ``options``; ``vocabulary()`` gives the AG vocabulary a foreign
    model's classes map to. An option the backend does not take is a usage error."""
    from stage1_detect.detector_backends import BackendOptionError, DetectorRequest, load_frame_detector

    try:
        return load_frame_detector(backend, DetectorRequest(weights=weights, vocabulary=vocabulary, **options))
    except BackendOptionError as e:
        raise click.UsageError(str(e)) from None


@main.command("detect")
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--store", "store_path", required=True, type=click.Path(path_type=Path),
              help="Store folder to write (suffix .h5 or .zarr picks the backend). Rerun to resume.")
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Detector checkpoint (from train-detector or convert-ag-detector, or a torchvision state dict with "
                   "--arch; with --backend detectron2, a detectron2 .pkl or .pth).")
@detector_options
@click.option("--split", "splits", multiple=True, type=click.Choice(["train", "val", "test"]),
              help="Splits to extract (repeatable; default all).")
@click.option("--union", "union_mode", type=click.Choice(["pooled", "map"]), default="pooled", show_default=True,
              help="Union features as the box head's vector, or STTran's 1024x7x7 map (~100 KB a pair).")
@click.option("--frames", "frame_source", type=click.Choice(["auto", "png", "mp4"]), default="auto",
              show_default=True, help="Read frames/ PNGs or decode videos/*.mp4.")
@click.option("--rescale-frames", is_flag=True,
              help="Resize a frame whose size differs from its annotation's bbox_size to that size (default: the "
                   "video fails, named, as an unreadable frame does).")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Frames per forward.")
@click.option("--workers", "num_workers", type=click.IntRange(min=0), default=2, show_default=True,
              help="DataLoader workers decoding frames.")
@click.option("--segment-mb", type=click.IntRange(min=0), default=256, show_default=True,
              help="Megabytes buffered per store segment (0: one segment per video).")
@click.option("--compress", multiple=True, type=click.Choice(["gt_objects", "gt_relations", "detections", "pairs"]),
              help="Compress this table with zstd (repeatable); slower reads, ~10%% smaller on features.")
@click.option("--max-videos", type=click.IntRange(min=0), default=0, help="At most this many videos per split (trials).")
@extraction_reader_options
@DEVICE_OPTION
@THREADS_OPTION
def detect_command(root: Path, store_path: Path, weights: Path, backend: str, splits, union_mode, frame_source,
                   rescale_frames, batch_size, num_workers, segment_mb, compress, max_videos, val_fraction, val_seed,
                   min_frames, strict, device, threads, **detector) -> None:
    """Run the detector once over every annotated frame of ROOT into a feature store.

    One store serves every mode (PREDCLS, SGCLS, SGDET): it holds the objects of the full
    annotations, marking those absent from _filtersmall, and union features for every pair
    any mode can ask for; stage 2 takes the mode (`train --mode`). Writes detections,
    GT-box and union features for every video of the chosen splits, one committed video at
    a time. A rerun skips committed videos. Under torchrun each rank extracts its share of
    the videos into its own part of the same store. Videos whose frames cannot be read are
    skipped and listed at the end and in STORE.extraction_log.jsonl.

    After the network, the torchvision backend runs STTran's detector step (docs/ag_detector.md);
    --nms-space, --max-detections, --clip, --scale and --detection-order choose otherwise, and
    the store's meta records the choice.

    --backend detectron2 --config CFG.yaml --weights W.pkl reads a detectron2 Faster R-CNN
    (C4 or FPN) instead, into the same store (docs/detectron2.md); it keeps detectron2's inference.
    """
    from common.runtime import distributed_rank
    from stage1_detect.action_genome import read_vocabulary
    from stage1_detect.extract import ExtractConfig, extract

    detector, sha = _load_detector(backend, weights, lambda: read_vocabulary(root), detector)
    rank, world, _ = distributed_rank()
    config = ExtractConfig(splits=tuple(splits) or ("train", "val", "test"), batch_size=batch_size,
                           num_workers=num_workers, frame_source=frame_source, rescale_frames=rescale_frames,
                           union_mode=union_mode,
                           segment_mb=segment_mb, compression={t: "zstd" for t in compress}, max_videos=max_videos)
    device = _device(device)
    if device == "cuda" and world > 1:  # torchrun: each rank on its own GPU
        device = f"cuda:{os.environ.get('LOCAL_RANK', '0')}"
    n_threads = _torch_threads(threads, num_workers)
    click.echo(f"detect: {device}, {n_threads} torch threads, {num_workers} decode workers", err=True)
    summary = extract(root, store_path, detector, weights_sha256=sha,
                      reader_options=_extraction_reader_options(val_fraction, val_seed, min_frames, strict),
                      config=config, device=device, rank=rank, world_size=world)
    click.echo(summary.line())
    if summary.failed:
        sys.exit(3)


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data/demo"),
              show_default=True, help="Working folder of the demo (dataset, detector run, store).")
@click.option("--videos", type=click.IntRange(min=4), default=80, show_default=True,
              help="Synthetic videos (about 55 reach training: RS-Net's relation score needs a few dozen "
              "to tell a video's objects from bystanders).")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--detector-epochs", type=click.IntRange(min=1), default=8, show_default=True,
              help="Epochs of the small detector (configs/detector_small.yaml has 10; 8 keeps the demo near 4 min).")
@click.option("--seeds", default="0,1,2", show_default=True,
              callback=lambda ctx, param, text: _parse_seeds(ctx, param, text),  # defined further down
              help="Seeds of the two relation heads (the table's mean +- sd and paired differences).")
@click.option("--epochs", type=click.IntRange(min=1), default=None,
              help="Epochs of the relation heads (default: configs/demo_sttran*.yaml's).")
@DEVICE_OPTION
def demo(out: Path, videos: int, seed: int, detector_epochs: int, seeds: list[int], epochs: int | None,
         device: str) -> None:
    """Run the pipeline on the built-in synthetic data.

    Synthesise Action Genome, read it back (PredCLS and SGDET annotations), train the small
    detector from scratch, extract every video into a feature store, check it and print its
    statistics, train STTran and STTran + RS-Net over --seeds (SGDET, the paper's headline
    setting, with the tiny demo recipes) from the store, evaluate them on the test split and
    print the rows of the RS-Net paper's Table 2 (`cli.py reproduce`): mean +- sd, the paired
    differences, the paper's figures beside; then write the page of `view` for a few test
    videos (both runs evaluated, and `predict` on every frame of one) and print where it is.
    Every step is a command of its own; see the README.
    """
    from demo import run_demo

    run_demo(out, videos=videos, seed=seed, detector_epochs=detector_epochs, device=_device(device), seeds=seeds,
             epochs=epochs, echo=click.echo)


# --- AG checkpoint conversion ---------------------------------------------------------


@main.command("convert-ag-detector")
@click.argument("src", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.argument("dst", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--allow-pickle", is_flag=True,
              help="Load SRC with full pickle instead of weights-only (runs code from the file: only for a "
                   "file you trust, and only if the weights-only load fails).")
def convert_ag_detector(src: Path, dst: Path, allow_pickle: bool) -> None:
    """Convert the AG baselines' detector, faster_rcnn_ag.pth, for `detect --weights`.

    SRC is the Faster R-CNN (ResNet-101 C4, 37 classes, anchor scales 4-32) that STTran,
    STKET, DSG-DETR and TEMPURA share, as jwyang/faster-rcnn.pytorch saves it (a dict with
    'model'). Renames every parameter onto the r101-c4 detector, turns the RPN's two-way
    softmax into one sigmoid logit per anchor, drops num_batches_tracked, and writes DST,
    a detector checkpoint (torchvision state dict, arch r101-c4, settings with
    legacy_rcnn=True: jwyang's anchors, '+1' boxes, clipping and NMS, 7x7 RoIAlign) that
    `detect --weights DST` loads. Fails, naming SRC, on a class-agnostic checkpoint, a
    class count other than 37, or any parameter it cannot place.
    """
    from stage1_detect.ag_checkpoint import convert_ag_checkpoint

    report = convert_ag_checkpoint(src, dst, allow_pickle=allow_pickle)
    click.echo(f"convert-ag-detector: {report.summary()}")


# --- store commands -----------------------------------------------------------------


@main.group("store")
def store_group() -> None:
    """Check, list and merge feature stores."""


@store_group.command("check")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--quick", is_flag=True, help="Skip checksums and per-row index checks.")
def store_check(path: Path, quick: bool) -> None:
    """Run every check on the store at PATH; exit 1 if a problem is found."""
    from store import check_store, open_store

    problems = check_store(path, deep=not quick, progress=True)
    for p in problems:
        click.echo(f"PROBLEM {p}", err=True)
    if problems:
        raise SystemExit(1)
    s = open_store(path)
    click.echo(f"ok: {path}: {len(s)} videos in {len(s.segments)} segment(s), schema {s.meta.schema_version}, "
               f"{'deep' if not quick else 'quick'} check")


@store_group.command("ls")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--split", default=None, help="Only this split.")
def store_ls(path: Path, split: str | None) -> None:
    """List the committed videos of the store at PATH (name, split, frames, pairs)."""
    from store import open_store

    s = open_store(path)
    for v in s.videos(split):
        click.echo(f"{v}\t{s.split_of(v)}\t{s.num_rows(v, 'frames')}\t{s.num_rows(v, 'pairs')}")


@store_group.command("merge")
@click.argument("src", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", type=click.Path(path_type=Path))
@click.option("--compress", multiple=True, metavar="TABLE",
              help="Compress this table with zstd (gt_objects, gt_relations, detections, pairs); repeatable.")
def store_merge(src: Path, dst: Path, compress: tuple[str, ...]) -> None:
    """Consolidate the segments of store SRC into one file DST (.h5 or .zarr)."""
    from store import merge, open_store

    merge(src, dst, compression={t: "zstd" for t in compress})
    click.echo(f"merged {len(open_store(dst))} videos into {dst}")


@main.command("stats")
@click.argument("path", type=click.Path(exists=True, path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None, help="Folder for one file per table.")
@click.option("--format", "fmt", type=click.Choice(["csv", "parquet"]), default="csv", show_default=True)
def store_stats(path: Path, out: Path | None, fmt: str) -> None:
    """Summarise the store at PATH (videos, frames, classes, predicates, bytes per array)."""
    from store.stats import check_tables_folder, stats, summary, write_tables

    if out is not None:
        check_tables_folder(out, path)
    tables = stats(path)
    click.echo(summary(tables))
    if out is not None:
        for p in write_tables(tables, out, fmt, store=path):
            click.echo(f"wrote {p}")


# --- stage 2 commands ---------------------------------------------------------------


@main.command("train")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="YAML recipe (configs/sttran_*.yaml, configs/demo_*.yaml); options below override it.")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run folder: config.yaml, run.json, log.csv/.json, last.pth (for --resume), best.pth.")
@click.option("--store", "store", help="Feature store written by `detect`.")
@click.option("--mode", type=MODE_CHOICE,
              help="Task mode; one store serves every mode (SGCLS/SGDET see the _filtersmall GT).")
@click.option("--head", help="Registered relation head (sttran).")
@click.option("--rsnet/--no-rsnet", default=None, help="Wrap the head in RS-Net (recipe's rsnet settings or defaults).")
@click.option("--epochs", type=click.IntRange(min=1))
@click.option("--lr", type=float)
@click.option("--videos-per-batch", type=click.IntRange(min=1))
@click.option("--workers", "num_workers", type=click.IntRange(min=0))
@THREADS_OPTION
@click.option("--seed", type=int)
@click.option("--max-videos", type=click.IntRange(min=0), help="Train on at most this many videos (trials).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any other recipe field, YAML value; dotted keys reach into dicts (head_cfg.hidden=64).")
@click.option("--resume", is_flag=True,
              help="Continue the run in OUT exactly where it stopped (its settings; more --epochs allowed).")
@click.option("--overwrite", is_flag=True, help="Replace the run in OUT (its files only) by a new one.")
@click.option("--trust-checkpoint", is_flag=True,
              help="With --resume: read OUT/last.pth with full pickle (runs code from the file: only for a file "
                   "you trust).")
@click.option("--no-progress", is_flag=True, help="No tqdm bars (logs still get one line per epoch).")
@click.option("--device", default=None, help="'cpu', 'cuda', 'cuda:1' or 'auto' (default: the recipe's).")
def train_command(config_path, out, store, mode, head, rsnet, epochs, lr, videos_per_batch, num_workers, threads, seed,
                  max_videos, sets, resume, overwrite, trust_checkpoint, no_progress, device) -> None:
    """Train a relation head (optionally with RS-Net) from the feature store.

    OUT must be new or empty, or hold a run to --resume (same settings) or --overwrite; one
    process trains into OUT at a time. Runs under torchrun too (DDP, videos sharded by rank,
    rank 0 logs and checkpoints).
    """
    import dataclasses

    from common.errors import ConfigError
    from common.training_run import resume_recipe
    from stage2_relations.recipe import load_config, parse_override
    from stage2_relations.train import train

    if resume and overwrite:
        raise click.UsageError("give --resume or --overwrite, not both")
    overrides = dict(store=store, mode=mode, head=head, epochs=epochs, lr=lr, videos_per_batch=videos_per_batch,
                     num_workers=num_workers, threads=threads, seed=seed, max_videos=max_videos, device=device)
    labels = {k: "--" + {"num_workers": "workers"}.get(k, k).replace("_", "-") for k in overrides}
    for text in sets:
        key, value = parse_override(text)
        overrides[key] = value
        labels[key] = f"--set {text}"
    cfg = load_config(resume_recipe(out, config_path, resume=resume), overrides, labels)
    if rsnet is True and cfg.rsnet is None:
        cfg = dataclasses.replace(cfg, rsnet={})
    elif rsnet is False:
        cfg = dataclasses.replace(cfg, rsnet=None)
    if not cfg.store:
        raise ConfigError("no store: give --store or a recipe with one")
    if cfg.device != "auto":
        _device(cfg.device)
    result = train(cfg, out, resume=resume, overwrite=overwrite, progress=not no_progress, echo=click.echo,
                   trust_checkpoint=trust_checkpoint)
    last = result["history"][-1] if result["history"] else {}
    click.echo(f"train: {cfg.head}{' + RS-Net' if cfg.rsnet is not None else ''} {cfg.mode}, "
               f"{result['parameters'] / 1e6:.2f} M parameters, {len(result['history'])} epochs, "
               f"final loss {last.get('loss_total', float('nan')):.4f}, best val R@20 {100 * max(result['best_r20'], 0):.1f} -> {out}")


# --- evaluation commands ------------------------------------------------------------


def eval_options(command):
    """`eval`'s options, each named as its :class:`~stage2_relations.eval_request.EvalRequest` field
    (the protocol's as :class:`~stage2_relations.eval_request.Protocol`'s). The view options'
    choices are their enums'; the protocol's are spelled out (importing their enums would load the
    store's modules on every command; tests/stage2_relations/test_eval_request.py checks that they agree)."""
    return _apply(command, [
        click.option("--predictions", "predictions", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None,
                     help="Predictions file (.npz, format in docs/evaluation.md) to score; no model needed."),
        click.option("--run", "run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path), default=None,
                     help="Evaluate a trained model: a `train` run folder (best.pth, else last.pth)."),
        click.option("--checkpoint", "checkpoint", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="Evaluate a trained model from this checkpoint file."),
        click.option("--store", "store_path", default=None,
                     help="With --run/--checkpoint: the store (default: the run's)."),
        click.option("--split", default="test", show_default=True, help="With --run/--checkpoint: the split to score."),
        click.option("--save-predictions", "save_predictions", type=click.Path(dir_okay=False, path_type=Path),
                     default=None,
                     help="With --run/--checkpoint: write the predictions and GT (.npz, docs/evaluation.md)."),
        click.option("--max-videos", type=click.IntRange(min=0), default=0,
                     help="With --run/--checkpoint: at most this many videos."),
        click.option("--device", default="cpu", show_default=True,
                     help="With --run/--checkpoint: 'cpu', 'cuda', 'auto'."),
        THREADS_OPTION,
        click.option("--ground-truth", "ground_truth", type=click.Path(exists=True, dir_okay=False, path_type=Path),
                     default=None, help="File with the gt_ arrays, when the predictions file has none. "
                     "Frames are matched by name; a GT frame without predictions counts 0."),
        click.option("--mode", type=MODE_CHOICE, default=None,
                     help="Task; defaults to the mode stored in the predictions file, or the run's. PREDCLS takes "
                     "object scores as 1. One store serves every mode."),
        click.option("--sgdet-boxes", type=_choice(SgdetBoxes), default=None,
                     help="With --run/--checkpoint, SGDET: sttran = STTran's test boxes (book/chair/food copied with "
                     "their next class, per-class NMS 0.6, the most person-like box as subject); raw = the stored "
                     "detections as they are. Default: the recipe's (sttran)."),
        click.option("--object-scores", type=_choice(ObjectScores), default=None,
                     help="With --run/--checkpoint, SGCLS/SGDET object labels and scores: sttran = the protocol "
                     "(SGDET: the detector's distribution; SGCLS: the classifier with STTran's subject and duplicate "
                     "rules); classifier = the trained classifier's softmax with background (not the protocol: it "
                     "gives the baseline a learned relevance score); detector = SGDET only: STTran's test boxes and "
                     "the detector's distribution for every head, DSG-DETR included (one rule across heads). "
                     "Default: the recipe's (sttran)."),
        click.option("--constraint", "constraints", type=click.Choice(["with", "semi", "no"]), multiple=True,
                     help="Graph constraint(s) to score (repeatable). Default: all three."),
        click.option("--semi-threshold", type=click.FloatRange(0, 1, max_open=True), default=0.9, show_default=True,
                     help="Semi constraint: keep spatial / contacting predicates with probability above this."),
        click.option("--mean-recall", type=click.Choice(["dataset", "all_frames", "frames_with_predicate"]),
                     default="dataset", show_default=True,
                     help="mR definition of the printed table and the plot: dataset = per predicate over the whole "
                     "test set (TEMPURA), all_frames = mean over all frames (STKET), frames_with_predicate = mean "
                     "over frames containing the predicate (DSG-DETR). All three are always written to the "
                     "JSON/CSV."),
        click.option("--padded-cells", type=click.Choice(["rank", "ignore"]), default="rank", show_default=True,
                     help="rank: reproduce STTran, whose zero-padded 26-wide rows let score-0 cells of other groups "
                     "be ranked (no constraint) or chosen (with / semi); ignore: the corrected protocol."),
        click.option("--precision-denominator", type=click.Choice(["k", "returned"]), default="k", show_default=True,
                     help="P@K divides a frame's hits by K, or by min(K, triplets the frame returned)."),
        click.option("--iou-threshold", type=click.FloatRange(0, 1, min_open=True), default=0.5, show_default=True,
                     help="Both boxes of a match need IoU >= this ('+1 pixel' convention)."),
        click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path), default=None,
                     help="Write metrics.json, metrics.csv, predicate_recall.csv/.png and table.txt here."),
        click.option("--trust-checkpoint", is_flag=True,
                     help="With --run/--checkpoint: read the checkpoint with full pickle (runs code from the file: "
                          "only for a file you trust)."),
    ])


@main.command("eval")
@eval_options
def eval_command(threads: int | None, **options) -> None:
    """Score a predictions file with STTran's Action Genome protocol (R@K, mR@K, P@K).

    Prints a table like the RS-Net paper's Tables 2 and 3 (R@10/20/50, P@10/20, mR@10/20 per
    constraint). With --run/--checkpoint, runs a trained model over a split of the store
    and also writes a PNG of a few frames with their top triplets, the parameter count and the
    inference speed; --save-predictions keeps its predictions (stage2_relations.evaluation.predictions_io).
    """
    import dataclasses

    from stage2_relations.eval_request import EvalRequest, score_predictions

    request = EvalRequest.from_options(**options)
    if request.sources != 1:
        raise click.UsageError("give exactly one of --predictions, --run, --checkpoint")
    if request.predictions is not None:
        score_predictions(request, echo=click.echo)
        return
    from stage2_relations.evaluate_checkpoint import evaluate_checkpoint

    _torch_threads(threads)
    evaluate_checkpoint(dataclasses.replace(request, device=_device(request.device)), echo=click.echo)


@main.command("predict")
@click.argument("videos", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--run", "run_dir", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A trained SGDET `train` run folder (best.pth, else last.pth); its store must still exist.")
@click.option("--weights", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="The detector the run's store was extracted with (as `detect --weights`).")
@detector_options
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: VIDEO.json and VIDEO.csv per video, scene_graphs.schema.json, and detections.h5 "
                   "(the detector's store). Rerun to resume.")
@click.option("--every", type=click.IntRange(min=1), default=1, show_default=True,
              help="Predict every N-th frame (from the first).")
@click.option("--frames", "frame_list", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A file of frame keys, one per line (VIDEO/NNNNNN.png): exactly these frames, e.g. the "
                   "annotated ones, to get what `eval` scores.")
@click.option("--batch-size", type=click.IntRange(min=1), default=8, show_default=True, help="Frames per forward.")
@click.option("--workers", "num_workers", type=click.IntRange(min=0), default=0, show_default=True,
              help="DataLoader workers decoding frames.")
@DEVICE_OPTION
@THREADS_OPTION
def predict_command(videos, run_dir, weights, backend, out, every, frame_list, batch_size, num_workers, device,
                    threads, **detector) -> None:
    """Scene graphs of videos without annotations: mp4 files, folders of NNNNNN.png/.jpg frames
    or folders of mp4 files, anywhere.

    The detector writes the chosen frames into a store (as `detect`, without GT), the run's
    SGDET test view and model run on it (as `eval`), and each video gets OUT/VIDEO.json (boxes,
    labels, scores, every pair's predicate probabilities and RS-Net's relevance, the triplets
    under the with constraint; schema in OUT/scene_graphs.schema.json, docs/predict.md) and
    OUT/VIDEO.csv (one row per triplet). A temporal head sees the predicted frames as the
    video: other frames, other context; --frames with a video's annotated frames gives
    exactly what `eval` scores. `cli.py view OUT --out PAGE` draws them.
    """
    from pipeline import predict_scene_graphs
    from stage1_detect.extract import ExtractConfig
    from stage1_detect.video_source import FrameSelection, find_videos
    from stage2_relations.scene_graphs import load_sgdet_run

    if frame_list is not None and every != 1:
        raise click.UsageError("give --every or --frames, not both")
    keys = None if frame_list is None else frozenset(
        line.strip() for line in frame_list.read_text().splitlines() if line.strip())
    device = _device(device)
    paths = find_videos(videos)
    _torch_threads(threads, num_workers)
    run = load_sgdet_run(run_dir, device=device)
    frame_detector, sha = _load_detector(backend, weights, lambda: run.meta.vocabulary, detector)
    done = predict_scene_graphs(paths, out, run, frame_detector, weights_sha256=sha,
                                selection=FrameSelection(every=every, keys=keys),
                                config=ExtractConfig(batch_size=batch_size, num_workers=num_workers, segment_mb=0),
                                device=device, echo=lambda line: click.echo(line, err=True))
    if done.graphs is not None:
        click.echo(done.graphs.line())
    if done.detected.failed:
        click.echo(f"predict: {len(done.detected.failed)} failed: " + "; ".join(done.detected.failed[:5]), err=True)
        sys.exit(3)


@main.command("view")
@click.argument("inputs", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder of the page: index.html, data/ and frames/ (replaced).")
@click.option("--name", "names", multiple=True, help="A name per input, in order (default: its folder or file name).")
@click.option("--video", "videos", multiple=True, help="Only this video (repeatable; default: every video).")
@click.option("--max-videos", type=click.IntRange(min=0), default=0, help="At most this many videos (0: all).")
@click.option("--top-k", type=click.IntRange(min=1), default=10, show_default=True, help="The page's initial cut.")
@click.option("--max-triplets", type=click.IntRange(min=1), default=50, show_default=True,
              help="Triplets kept per frame and run (by rank, and by rank without RS-Net's relevance).")
@click.option("--no-pictures", is_flag=True, help="Draw boxes on blank frames instead of reading the videos.")
def view_command(inputs, out, names, videos, max_videos, top_k, max_triplets, no_pictures) -> None:
    """A static HTML page of scene graphs, opened from disk (no network): INPUTS are `predict`
    output folders (or VIDEO.json files) and predictions files of `eval --save-predictions`
    (.npz, with ground truth: hits and misses), one run each, side by side.

    Per video: the frames with boxes and labels, the chosen frame's triplets and RS-Net's
    relevance, the ground truth recalled or missed, the pairs RS-Net pushed below the cut, and
    the scene graph over time (a row per subject-predicate-object, a column per frame, shaded
    by score); filters by score, top-K and predicate group. Pictures come from each video's
    source (the mp4 or the frames folder predict read, the AG root of an evaluated store).
    """
    from stage1_detect.video_source import read_document_frames
    from stage2_relations.viewer import ViewOptions, load_run, write_page

    if names and len(names) != len(inputs):
        raise click.UsageError(f"give one --name per input ({len(inputs)}), or none")
    runs = [load_run(path, names[i] if names else None) for i, path in enumerate(inputs)]
    chosen = list(videos) or sorted({d["video"] for r in runs for d in r.documents})
    chosen = chosen[:max_videos] if max_videos else chosen
    page = write_page(runs, out, read_frames=None if no_pictures else read_document_frames, videos=chosen,
                      options=ViewOptions(top_k=top_k, max_triplets=max_triplets))
    click.echo(f"view: {len(chosen)} videos, {len(runs)} run(s) -> {page.resolve().as_uri()}")


def _parse_seeds(ctx: click.Context, param: click.Parameter, text: str) -> list[int]:
    from stage2_relations.compare import parse_seeds

    try:
        return parse_seeds(text)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="--seeds") from e


@main.command("compare")
@click.option("--config", "recipes", multiple=True, required=True,
              type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="A variant's YAML recipe (repeatable). The first is the reference of every difference.")
@click.option("--name", "names", multiple=True,
              help="A variant's name, one per --config in the same order (default: the recipe file stems). "
              "Names the folder OUT/NAME/.")
@click.option("--seeds", default="0", show_default=True, callback=_parse_seeds,
              help="Seeds to train each variant with: 0,1,2 or 0-4 (inclusive) or a mix such as 0-2,7.")
@click.option("--store", help="Feature store shared by every variant (default: the recipes', which must agree).")
@click.option("--mode", type=MODE_CHOICE,
              help="Task mode of every variant (default: the recipes', which must agree).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: OUT/NAME/seedK/ run folders, OUT/compare.json/.csv/.png/.txt, compare_curves.png.")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs of every variant (default: each recipe's).")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any other recipe field for every variant, YAML value; dotted keys reach into dicts "
              "(head_cfg.hidden=64).")
@click.option("--object-scores", "rules", default="sttran", show_default=True,
              help="Comma-separated object-scores rules to evaluate each run with (sttran: the protocol; "
              "classifier: the alternative rule, reported beside it; detector, SGDET: the detector's "
              "distribution for every head, DSG-DETR included). One pair of tables per rule.")
@click.option("--device", default=None, help="'cpu', 'cuda', 'cuda:1' or 'auto' (default: the recipes').")
@THREADS_OPTION
@click.option("--no-progress", is_flag=True, help="No tqdm bars.")
@click.option("--trust-checkpoint", is_flag=True,
              help="Read OUT's checkpoints with full pickle (runs code from the files: only for files you trust).")
def compare_command(recipes, names, seeds, store, mode, out, epochs, sets, rules, device, threads,
                    no_progress, trust_checkpoint) -> None:
    """Train and evaluate several recipes x seeds from one store; means, spreads, differences.

    \b
    For each variant (a recipe with the shared --store/--mode/--epochs/--set) and seed:
      train into OUT/NAME/seedK/, evaluate on the test split (with and no constraint) into
      OUT/NAME/seedK/eval_test_MODE_RULE/ for each --object-scores rule, and for RS-Net
      variants measure p_t0 on every positive and negative test pair.
    Prints, per rule, a table shaped like the RS-Net paper's Table 2 (Params (M), FPS, R@10,
    R@20, P@10, P@20, mR@10, mR@20 under the with constraint) and one for the no constraint,
    then p_t0; writes OUT/compare.json (every run and aggregate), compare.csv (one row per
    variant x rule x metric), compare.png (bars with sd error bars), compare_curves.png (the
    training curves of every seed of each variant) and compare.txt.

    \b
    Statistics: each cell is the mean +- the sample sd (ddof=1) over seeds. Each variant
    after the first has a 'diff' row: the differences from the first variant seed by seed
    (same seed, same pairing), their mean +- sd, and '>2sd' yes/no: whether |mean diff| >
    2 x sd(diff) (n/a with one seed). A screen against seed-to-seed noise, not a test: it
    is looser than a 5% paired t-test with 2-3 seeds and stricter from 4 seeds on.

    \b
    Resumable: rerun the same command to continue. A run whose last.pth holds all its epochs
    is not retrained; a run with fewer (interrupted, or --epochs raised) resumes exactly from
    last.pth; an evaluation whose metrics.json matches the checkpoint (sha256) and the options
    is not redone. A run folder holding another config (a field `train --resume` would refuse,
    or more completed epochs than --epochs) is an error naming the folder: remove it or use
    another --out.
    """
    from stage2_relations.compare import load_variants, run_comparison
    from stage2_relations.compare_report import format_report, write_outputs
    from stage2_relations.recipe import parse_override

    seed_list = seeds
    rule_list = [r.strip() for r in rules.split(",") if r.strip()]
    _torch_threads(threads)
    overrides = dict(store=store, mode=mode, epochs=epochs, device=device)
    overrides.update(parse_override(s) for s in sets)
    variants = load_variants([str(p) for p in recipes], list(names) or None, overrides)
    if variants[0].config.device != "auto":
        _device(variants[0].config.device)
    comparison = run_comparison(variants, seed_list, out, rules=rule_list, progress=not no_progress, echo=click.echo,
                                trust_checkpoints=trust_checkpoint)
    report = format_report(comparison)
    click.echo("")
    click.echo(report)
    paths = write_outputs(comparison, out, report)
    trained = sum(r.trained_now for r in comparison.runs)
    click.echo(f"compare: {len(variants)} variant(s) x {len(seed_list)} seed(s), {trained} run(s) trained now, "
               f"wrote {', '.join(p.name for p in paths.values())} to {out}")


@main.command("reproduce")
@click.option("--store", required=True, help="Feature store every run trains and is evaluated on (test split).")
@click.option("--tables", default="2,3,4", show_default=True,
              help="The RS-Net paper's tables: 2 (SGDET), 3 (SGCLS), 4 (ablations, SGDET).")
@click.option("--seeds", default="0,1,2", show_default=True, callback=_parse_seeds,
              help="Seeds of every variant: 0,1,2 or 0-4.")
@click.option("--recipes", "recipe_set", default="paper", show_default=True,
              help="Recipe set: 'paper' (full-size heads, the paper's optimiser settings, 10 epochs; for a GPU), "
              "'small' (the tiny demo heads, for a CPU and the synthetic data) or a path (configs/reproduce/).")
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: OUT/MODE/VARIANT/seedK/ runs, OUT/reproduce.md/.csv/.tex/.json, tableN.png.")
@click.option("--epochs", type=click.IntRange(min=1), help="Epochs of every run (default: the recipes').")
@click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
              help="Any other recipe field for every run, YAML value; dotted keys reach into dicts.")
@click.option("--device", default=None, help="'cpu', 'cuda', 'cuda:1' or 'auto' (default: the recipes').")
@THREADS_OPTION
@click.option("--estimate-only", is_flag=True, help="Print the plan and its expected time; train nothing.")
@click.option("--no-progress", is_flag=True, help="No tqdm bars.")
def reproduce_command(store, tables, seeds, recipe_set, out, epochs, sets, device, threads, estimate_only,
                      no_progress) -> None:
    """The RS-Net paper's Tables 2, 3 and 4 over seeds, beside the published figures.

    \b
    Trains and evaluates (through `compare`, resumable: a rerun trains only what is missing)
    every variant each table needs: Table 2 STTran, STKET, DSG-DETR each without and with
    RS-Net in SGDET; Table 3 the same in SGCLS; Table 4 STTran + RS-Net and its ablations
    (no temporal encoder, mean token, no context fusion) in SGDET. Prints first the expected
    time (from bench/results/train_speed.json where it measured the recipe, else documented
    per-frame figures; it says which), then each table in the paper's layout: ours as mean +-
    sd over seeds with [the paper's figure] beside it, and the paired differences from the
    baseline with [the paper's gain]. Writes OUT/reproduce.md, .csv, .tex, .json, and per
    table tableN.png and tableN_curves.png (the training curves of every seed).
    Documented in docs/reproduce.md.
    """
    from stage2_relations.recipe import parse_override
    from stage2_relations.reproduce import (
        device_kind,
        estimate_time,
        load_recipe_set,
        parse_tables,
        plan_tables,
        run_reproduction,
    )
    from stage2_relations.reproduce_report import format_markdown, write_outputs

    n_threads = _torch_threads(threads)
    recipes = load_recipe_set(recipe_set)
    overrides = dict(store=store, epochs=epochs, device=device)
    overrides.update(parse_override(s) for s in sets)
    plan = plan_tables(parse_tables(tables), recipes, out, overrides)
    first = plan[0][2][0].config
    if first.device != "auto" and not estimate_only:  # an estimate for a GPU may be made without one
        _device(first.device)
    runs = {(folder, v.name): v for _, folder, variants in plan for v in variants}
    estimate = estimate_time([(folder, v) for (folder, _), v in runs.items()], seeds)
    header = [f"reproduce: tables {tables} of the RS-Net paper, recipe set {recipes.name} ({recipes.path}), "
              f"seeds {','.join(map(str, seeds))}, store {first.store}, device {device_kind(first.device)}, "
              f"torch threads {n_threads}",
              estimate.line() + "; per-frame costs from:", *[f"  {s}" for s in estimate.sources]]
    for line in header:
        click.echo(line)
    if estimate_only:
        return
    results = run_reproduction(plan, seeds, progress=not no_progress, echo=click.echo)
    report = format_markdown(results, header[:1])
    click.echo("")
    click.echo(report)
    paths = write_outputs(results, out, report)
    trained = sum(r.trained_now for x in results for r in x.comparison.runs)
    click.echo(f"reproduce: {len(results)} table(s), {len(runs)} variant(s) x {len(seeds)} seed(s), "
               f"{trained} run(s) trained now, wrote {', '.join(p.name for p in paths.values())} to {out}")

if __name__ == "__main__":
    sys.exit(main())
