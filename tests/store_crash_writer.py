"""Subprocess of the crash test: commits ``commit`` videos, then hangs inside the next one.

Usage: python tests/store_crash_writer.py STORE N_VIDEOS COMMIT. It prints ``COMMITTED k``
after each commit and ``HANGING`` once the next segment's temporary file holds part of a
video, then sleeps until killed.
"""

import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from store import StoreWriter, backends  # noqa: E402
from store_fixtures import small_meta, small_videos  # noqa: E402


def main() -> None:
    path, n, commit = Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    meta = small_meta()
    videos = small_videos(meta, n)
    w = StoreWriter(path, meta, segment_bytes=0)
    for k, v in enumerate(videos):
        if k == commit:
            cls = backends.WRITERS[w.backend]
            original = cls._write_rows

            def hang(self, spec, start, data, _orig=original):  # noqa: ANN001
                _orig(self, spec, start, data)
                if spec.key == "gt_relations/labels":
                    if hasattr(self, "_f"):
                        self._f.flush()
                    print("HANGING", flush=True)
                    time.sleep(600)

            cls._write_rows = hang
        w.write_video(v)
        print(f"COMMITTED {k + 1}", flush=True)


if __name__ == "__main__":
    main()
