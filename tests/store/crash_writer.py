"""Subprocess of the crash test: commits ``commit`` videos, then hangs while writing the next.

Usage: python tests/store/crash_writer.py STORE N_VIDEOS COMMIT. It prints ``COMMITTED k``
after each commit and ``HANGING`` once the next segment's temporary file holds part of it
(HDF5: half of the segment's bytes; zarr: part of a video's arrays), then sleeps until killed.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the checkout: store/ and tests/

from store import StoreWriter, backends  # noqa: E402
from tests.helpers.store import small_meta, small_videos  # noqa: E402


def _hang() -> None:
    print("HANGING", flush=True)
    time.sleep(600)


def main() -> None:
    path, n, commit = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    meta = small_meta()
    videos = small_videos(meta, n)
    w = StoreWriter(path, meta, segment_bytes=0)
    for k, v in enumerate(videos):
        if k == commit:
            if w.backend == "hdf5":  # the segment is built in memory, then written in one go
                def half_image(self, image):  # noqa: ANN001
                    with open(self.tmp, "wb") as fh:
                        fh.write(image[: len(image) // 2])
                        fh.flush()
                    _hang()

                backends.H5SegmentWriter._write_image = half_image
            else:
                original = backends.ZarrSegmentWriter._write_rows

                def hang(self, spec, start, data, _orig=original):  # noqa: ANN001
                    _orig(self, spec, start, data)
                    if spec.key == "gt_relations/labels":
                        self._drain(spec.key, final=True)
                        _hang()

                backends.ZarrSegmentWriter._write_rows = hang
        w.write_video(v)
        print(f"COMMITTED {k + 1}", flush=True)


if __name__ == "__main__":
    main()
