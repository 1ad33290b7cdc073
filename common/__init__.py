"""What every package uses and none owns: errors a user can fix (:mod:`common.errors`), recipe
loading and checks (:mod:`common.config`), atomic files and locks (:mod:`common.files`),
PyTorch files read weights-only (:mod:`common.torch_files`), run folders (:mod:`common.run_folder`),
a training run's folder, logs and epoch seeds (:mod:`common.training_run`),
device, rank and provenance (:mod:`common.runtime`), thread counts (:mod:`common.threads`).
It imports no other package of the project."""
