"""The pieces of :func:`lipschitz_lab.trainer.train`, one step of the loop each:

- :mod:`.setup`: the config, data, model and policy (every config error comes here,
  before a run exists);
- :mod:`.session`: the run in the store, resume, checkpoints, and the record sinks;
- :mod:`.steps`: one training step and the epoch's end (evaluation, the epoch record).
"""
