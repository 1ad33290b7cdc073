"""One rule for every command that writes results: never replace what the user did not ask to replace.

The commands that write results (``train``, ``train-detector``, ``eval``'s outputs,
``convert-ag-detector``, ``synth``) check their destination here, before they write anything:

* a **run folder** (:func:`claim_run_folder`): a folder that holds a run (any of the files the
  command writes) is continued only when asked (``--resume``) and replaced only when asked
  (``--overwrite``: the run's own files, nothing else); otherwise it is an error naming the
  folder and what it holds;
* an **output file** (:func:`check_output_file`): a missing file is written; an existing one is
  replaced only when it is the command's own kind of output (rerunning the command), never a
  checkpoint, a store or a user's file; and never the command's own input
  (:func:`check_not_input`);
* a **generated tree** (:func:`foreign_files`): a folder the command regenerates whole is
  cleared only when every file in it is one the command writes; a file of the user's there
  stops the command, named.

Every refusal is one :class:`RunFolderError` line naming the path and what to do instead.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Iterable, Sequence

from common.errors import UserError
from common.files import remove_temps


class RunFolderError(UserError):
    """A destination holds something the command was not asked to replace."""


def claim_run_folder(folder: Path | str, run_files: Sequence[str], *, resume: bool, overwrite: bool) -> list[str]:
    """Check ``folder`` (held under the caller's lock) before a run writes ``run_files`` there.

    Removes the temporaries of killed writes of those files first. Returns the run files present
    (what ``resume`` continues). ``overwrite`` removes exactly those files (nothing else of the
    folder) and returns []. Without either, a folder holding any of them is a
    :class:`RunFolderError`.
    """
    if resume and overwrite:
        raise RunFolderError("give --resume or --overwrite, not both")
    folder = Path(folder)
    remove_temps(folder, set(run_files))
    present = [n for n in run_files if (folder / n).exists()]
    if overwrite:
        for n in present:
            (folder / n).unlink()
        return []
    if present and not resume:
        raise RunFolderError(f"{folder}: holds a run ({', '.join(present)}): continue it with --resume, start it "
                             f"again with --overwrite, or choose another --out")
    return present


def same_file(a: Path | str, b: Path | str) -> bool:
    """Whether two paths name one file (links and relative forms included); False when either is missing."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def check_not_input(output: Path | str, inputs: Iterable[Path | str], *, option: str) -> None:
    """Refuse an output path that names one of the command's inputs (it would be replaced by
    what is made from it)."""
    for src in inputs:
        if same_file(output, src):
            raise RunFolderError(f"{output}: {option} names the input {src}; writing there would replace it: "
                                 f"choose another path")


def check_output_file(path: Path | str, *, is_own: Callable[[Path], bool], what: str, option: str,
                      inputs: Iterable[Path | str] = ()) -> None:
    """Check a file a command is about to write (``option`` names it in the message).

    Missing: fine. Existing and ``is_own(path)`` (a ``what`` this command wrote earlier): it is
    replaced, as rerunning the command asks. Anything else (a folder, a checkpoint, a store, a
    user's file), or one of ``inputs``: :class:`RunFolderError`.
    """
    path = Path(path)
    check_not_input(path, inputs, option=option)
    if not path.exists() and not path.is_symlink():
        return
    if path.is_dir():
        raise RunFolderError(f"{path}: {option} names a folder; give a file path")
    if not is_own(path):
        raise RunFolderError(f"{path}: exists and is not a {what}; {option} would replace it: choose another "
                             f"path, or remove it first")


def foreign_files(folder: Path | str, is_own: Callable[[str], bool], *, subfolders: Sequence[str]) -> list[str]:
    """The files under ``folder``'s ``subfolders`` (paths relative to ``folder``, '/'-separated)
    that ``is_own`` does not claim: what clearing those subfolders would delete of the user's."""
    folder = Path(folder)
    out = []
    for sub in subfolders:
        base = folder / sub
        if not base.is_dir():
            continue
        for dirpath, _, files in os.walk(base):
            for name in files:
                rel = (Path(dirpath) / name).relative_to(folder).as_posix()
                if not is_own(rel):
                    out.append(rel)
    return sorted(out)


__all__ = ["RunFolderError", "check_not_input", "check_output_file", "claim_run_folder", "foreign_files",
           "same_file"]
