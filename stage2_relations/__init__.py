"""Stage 2: relation heads trained and evaluated from the feature store.

* :mod:`.data`: videos of the store as :class:`~.data.RelationBatch` objects, for a mode,
  with load-time negative sampling (RS-Net 4.2) and spatial masks;
* :mod:`.heads`: the head registry (STTran) and RS-Net, which wraps any head;
* :mod:`.train`: the training loop (AdamW, clip, plateau on val R@20, exact resume, DDP);
* :mod:`.evaluation`: the Action Genome protocol; :mod:`.evaluate_checkpoint`: ``cli.py eval --run``.

``docs/stage2.md`` describes them with the figures measured on the synthetic data.
"""
