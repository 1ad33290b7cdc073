"""What every package uses and none owns: errors a user can fix (:mod:`common.errors`), recipe
loading and checks (:mod:`common.config`), atomic files and locks (:mod:`common.files`),
PyTorch files read weights-only (:mod:`common.torch_files`), run folders (:mod:`common.run_folder`),
device, rank and provenance (:mod:`common.runtime`), thread counts (:mod:`common.threads`).
It imports no other package of the project."""
