"""Command-line entry point: ``python cli.py COMMAND`` or, once installed, ``dsgg COMMAND``.

Thin by design: every command parses its options and calls an importable function.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from store.vocabulary import Mode


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


def reader_options(command):
    """The Action Genome reader's filters as options, shared by every command that reads AG."""
    options = [
        click.option("--mode", type=click.Choice([m.value for m in Mode]), default="predcls", show_default=True,
                     help="Task mode; sgcls and sgdet read the _filtersmall annotations, as the baselines do."),
        click.option("--val-fraction", type=float, default=0.05, show_default=True,
                     help="Fraction of train videos held out as validation."),
        click.option("--val-seed", type=int, default=0, show_default=True, help="Seed of the validation draw."),
        click.option("--min-frames", type=int, default=3, show_default=True,
                     help="Drop videos with fewer kept frames (the baselines keep videos with more than 2)."),
        click.option("--keep-frames-without-person", is_flag=True,
                     help="Keep frames in which the person detector found no box (the baselines drop them)."),
        click.option("--strict", is_flag=True,
                     help="Fail on a visible object without a usable box instead of skipping and counting it."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _reader_options(mode, val_fraction, val_seed, min_frames, keep_frames_without_person, strict):
    from stage1_detect.action_genome import ReaderOptions

    return ReaderOptions.for_mode(
        mode, val_fraction=val_fraction, val_seed=val_seed, min_frames=min_frames,
        require_person_box=not keep_frames_without_person, on_bad_object="error" if strict else "skip",
    )


@main.command()
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write the dataset into (created; existing files are overwritten).")
@click.option("--videos", type=click.IntRange(min=1), default=40, show_default=True, help="Number of videos.")
@click.option("--frames", type=click.IntRange(min=1), default=16, show_default=True,
              help="Annotated frames per video.")
@click.option("--seed", type=int, default=0, show_default=True, help="Same seed, same bytes.")
@click.option("--size", default="320x240", show_default=True, help="Frame size WIDTHxHEIGHT.")
@click.option("--no-png", is_flag=True, help="Skip the frames/ PNG dump (videos/*.mp4 only).")
def synth(out: Path, videos: int, frames: int, seed: int, size: str, no_png: bool) -> None:
    """Write a synthetic dataset in the exact Action Genome layout.

    Frames, videos, both annotation pickles (and _filtersmall), the class files and
    frame_list.txt, with the edge cases the reader's filters exist for. Deterministic
    for a seed.
    """
    from stage1_detect.synth import SynthConfig, generate_synthetic_ag

    width, height = _parse_size(size)
    config = SynthConfig(videos=videos, frames_per_video=frames, width=width, height=height, seed=seed,
                         write_png=not no_png)
    summary = generate_synthetic_ag(out, config)
    click.echo(f"synth: {summary.videos} videos, {summary.frames} frames, {summary.objects} objects, "
               f"{summary.relations} relations in {summary.seconds:.1f}s -> {summary.root}")


def _parse_size(size: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in size.lower().split("x"))
    except ValueError:
        raise click.BadParameter(f"expected WIDTHxHEIGHT, e.g. 320x240, got {size!r}", param_hint="--size")
    return width, height


@main.command()
@click.argument("root", type=click.Path(exists=True, file_okay=False, path_type=Path))
@reader_options
def dataset(root: Path, **options) -> None:
    """Read an Action Genome root and print what the reader found.

    ROOT holds annotations/ (and frames/, videos/). Prints videos, frames, objects and
    relations per split and what each filter removed; on real AG with the defaults, train
    has 7,584 videos and 177,330 frames before the validation split is taken out.
    """
    from stage1_detect.action_genome import AnnotationError, describe, load_action_genome

    try:
        ag = load_action_genome(root, _reader_options(**options))
    except AnnotationError as e:
        raise click.ClickException(str(e))
    click.echo(describe(ag))


@main.command()
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), default=Path("data/demo"),
              show_default=True, help="Working folder of the demo.")
@click.option("--videos", type=click.IntRange(min=1), default=40, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: Path, videos: int, seed: int) -> None:
    """Run the pipeline on the built-in synthetic data.

    Today: synthesise Action Genome, then read it back as PredCLS and as SGCLS/SGDET
    data and print what the reader found.
    """
    from stage1_detect.action_genome import ReaderOptions, describe, load_action_genome
    from stage1_detect.synth import SynthConfig, generate_synthetic_ag

    root = out / "ag"
    summary = generate_synthetic_ag(root, SynthConfig(videos=videos, seed=seed))
    click.echo(f"[1/2] synthesised {summary.videos} videos, {summary.frames} frames in {summary.seconds:.1f}s -> {root}")
    # The demo's 40 videos give ~30 train videos; 10% keeps a few for validation.
    for mode in (Mode.PREDCLS, Mode.SGDET):
        ag = load_action_genome(root, ReaderOptions.for_mode(mode, val_fraction=0.1))
        click.echo(f"[2/2] reader, {mode.value}:")
        click.echo(describe(ag))


# --- store commands -----------------------------------------------------------------


# --- evaluation commands ------------------------------------------------------------


if __name__ == "__main__":
    sys.exit(main())
