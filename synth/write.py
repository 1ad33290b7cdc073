"""Writing a synthetic AG root: the frames (PNG and lossless mp4), the pickles, the class
files, the frame list and ``synth_meta.json`` (:func:`generate_synthetic_ag`)."""

from __future__ import annotations

import json
import logging
import pickle
import re
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from common.run_folder import RunFolderError, foreign_files
from synth.annotate import annotate_frame, hidden_at
from synth.config import SynthConfig, SynthSummary
from synth.plan import FIRST_NUMBER, Video, frame_key, plan_video
from synth.render import render
from synth.simulate import simulate
from synth.world import ACTIVITIES, RAW_OBJECT_CLASSES, RAW_PREDICATE_CLASSES, SMALL_EDGE

log = logging.getLogger(__name__)

META_FILE = "synth_meta.json"

def _write_mp4(path: Path, frames: list[np.ndarray], fps: int) -> str:
    import av

    codec, pix_fmt = ("libx264rgb", "rgb24") if "libx264rgb" in av.codecs_available else ("libx264", "yuv444p")
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].shape[1], frames[0].shape[0]
        stream.pix_fmt = pix_fmt
        # qp 0 is lossless for libx264rgb (max abs error 0 after decoding to rgb24).
        stream.options = {"qp": "0", "preset": "ultrafast"}
        stream.codec_context.thread_count = 1
        for t, img in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts = t  # in 1/fps: a constant rate from 0, so the dump's picture t+1 is frame t
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return codec


_OWN = re.compile(r"^(frames/[^/]+\.mp4/\d{6}\.png|videos/[^/]+\.mp4|annotations/(person_bbox|object_bbox_and_"
                  r"relationship(_filtersmall)?)\.pkl|annotations/(object_classes|relationship_classes|frame_list)"
                  r"\.txt)$")


def _written_by_synth(rel: str) -> bool:
    """Whether a path under an earlier synthetic root (relative, '/'-separated) is one synth writes."""
    return _OWN.match(rel) is not None


def _clear_previous(root: Path) -> None:
    import shutil

    if not root.exists():
        return
    if not root.is_dir():
        raise FileExistsError(f"{root}: exists and is not a folder")
    if any(root.iterdir()) and not (root / META_FILE).is_file():
        raise FileExistsError(f"{root}: not empty and not a synthetic dataset (no {META_FILE}); refusing to write into it")
    theirs = foreign_files(root, _written_by_synth, subfolders=("frames", "videos", "annotations"))
    if theirs:
        raise RunFolderError(f"{root}: an earlier synthetic dataset, but {theirs[0]}"
                             f"{f' (and {len(theirs) - 1} more files)' if len(theirs) > 1 else ''} is not one synth "
                             f"writes; regenerating would delete it: move it, or choose another --out")
    for sub in ("frames", "videos", "annotations"):
        if (root / sub).is_dir():
            shutil.rmtree(root / sub)


def make_video(index: int, config: SynthConfig, taken: set[str]) -> Video:
    """Plan and simulate video ``index``: everything but the pixels and the annotations."""
    rng = np.random.default_rng([config.seed, index])
    video = plan_video(rng, index, config, taken)
    sc = min(config.width / 320, config.height / 240)
    video.states = simulate(video, rng, config.width, config.height, sc)
    return video


def generate_synthetic_ag(out: Path | str, config: SynthConfig = SynthConfig(), progress: bool = True) -> SynthSummary:
    """Write a synthetic Action Genome root at ``out``.

    ``out`` must be missing, empty, or an earlier synthetic root (it has ``synth_meta.json``),
    whose ``frames/``, ``videos/`` and ``annotations/`` are then replaced, so that no file of
    a larger earlier run survives. Anything else is refused: a real AG root is never touched.

    Returns counts and the wall time. Same ``config`` => byte-identical pickles, class
    files, frame list, PNGs and ``synth_meta.json``.
    """
    started = time.perf_counter()
    root = Path(out)
    _clear_previous(root)
    ann_dir = root / "annotations"
    ann_dir.mkdir(parents=True, exist_ok=True)
    W, H = config.width, config.height
    sc = min(W / 320, H / 240)
    persons: dict[str, dict] = {}
    objects: dict[str, list] = {}
    meta_videos: dict[str, dict] = {}
    taken: set[str] = set()
    n_objects = n_relations = decoded_total = 0
    codec = ""
    splits = {"train": 0, "test": 0}
    for index in tqdm(range(config.videos), desc="synth videos", unit="video", disable=not progress):
        video = make_video(index, config, taken)
        taken.add(video.name)
        splits[video.split] += 1
        hidden_by_t = {t: hidden_at(video, k) for k, t in enumerate(video.frame_numbers)}
        frame_dir = root / "frames" / video.name
        if config.write_png:
            frame_dir.mkdir(parents=True, exist_ok=True)
        need_all = config.write_mp4 or (config.write_png and config.png_all_frames)
        render_ts = range(video.decoded) if need_all else video.frame_numbers
        rendered = []
        for t in render_ts:
            img = render(video, t, hidden_by_t.get(t, set()), sc, W)
            if config.write_png and (config.png_all_frames or t in hidden_by_t):
                Image.fromarray(img).save(root / "frames" / frame_key(video.name, t), compress_level=1)
            if config.write_mp4:
                rendered.append(img)
        if config.write_mp4:
            (root / "videos").mkdir(parents=True, exist_ok=True)
            codec = _write_mp4(root / "videos" / video.name, rendered, config.fps)
        decoded_total += video.decoded
        truths = {}
        for k, t in enumerate(video.frame_numbers):
            key = frame_key(video.name, t)
            entries, truth = annotate_frame(video, k, W, H, sc)
            box = np.array([video.states[t].person_box], dtype=np.float32)
            if not truth["person_detected"]:
                box = np.zeros((0, 4), dtype=np.float32)
            persons[key] = {"bbox": box, "bbox_size": (W, H)}
            objects[key] = entries
            truths[key] = truth
            n_objects += len(entries)
            n_relations += sum(len(e["attention_relationship"] or []) + len(e["spatial_relationship"] or [])
                               + len(e["contacting_relationship"] or []) for e in entries)
        meta_videos[video.name] = {
            "index": index,
            "activity": video.activity.name,
            "bystander_activity": video.distractor.name,
            "split": video.split,
            "relevant": [o.cls for o in video.objects if o.relevant],
            "roles": [o.role for o in video.objects if o.relevant],
            "bystanders": [o.cls for o in video.objects if not o.relevant],
            "decoded_frames": video.decoded,
            "frame_numbers": [t + FIRST_NUMBER for t in video.frame_numbers],  # the numbers in the keys
            "edge_cases": video.edges,
            "frames": truths,
        }
    keys = sorted(objects)
    persons = {k: persons[k] for k in keys}
    objects = {k: objects[k] for k in keys}
    small = {k: [e for e in v if e["bbox"] is None or min(e["bbox"][2], e["bbox"][3]) >= SMALL_EDGE]
             for k, v in objects.items()}
    for name, data in (("person_bbox.pkl", persons), ("object_bbox_and_relationship.pkl", objects),
                       ("object_bbox_and_relationship_filtersmall.pkl", small)):
        with open(ann_dir / name, "wb") as fh:
            pickle.dump(data, fh, protocol=4)
    (ann_dir / "object_classes.txt").write_text("\n".join(RAW_OBJECT_CLASSES) + "\n")
    (ann_dir / "relationship_classes.txt").write_text("\n".join(RAW_PREDICATE_CLASSES) + "\n")
    (ann_dir / "frame_list.txt").write_text("\n".join(keys) + "\n")
    meta = {
        "note": "Generator truth of synth; not part of the Action Genome layout.",
        "config": asdict(config),
        "activities": {a.name: {"relevant_classes": list(a.classes)} for a in ACTIVITIES},
        "videos": meta_videos,
    }
    (root / META_FILE).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    summary = SynthSummary(root=root, videos=config.videos, frames=len(keys), objects=n_objects,
                           relations=n_relations, seconds=time.perf_counter() - started,
                           train_videos=splits["train"], test_videos=splits["test"],
                           decoded_frames=decoded_total, codec=codec)
    log.info(summary.line())
    return summary
