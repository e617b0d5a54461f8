"""The pipeline: train networks and keep them, measure kept networks, read what is stored.

- :mod:`~sepdtd.pipeline.config`: the settings of both stages, with one canonical hash;
- :mod:`~sepdtd.pipeline.store`: kept networks (safetensors, manifest, digests) and stage records;
- :mod:`~sepdtd.pipeline.fingerprint`: what the code computes, from small deterministic probes;
- :mod:`~sepdtd.pipeline.train`: the training stage;
- :mod:`~sepdtd.pipeline.measure`: the measure stage.

The protocols (:mod:`sepdtd.experiments`, :mod:`sepdtd.beyond`, :mod:`sepdtd.tuning`) are sets of
jobs and measurements over these stages.
"""
