"""Latency on a target: per-layer LUTs, their files, and the calibrated latency model.

- :mod:`~hwdnal.latency.pipeline`: ``profile_model`` (what ``hwdnal profile`` runs)
- :mod:`~hwdnal.latency.lut`: LUT files (``load_lut``)
- :mod:`~hwdnal.latency.predictor`: ``LatencyModel`` (differentiable predicted latency)
"""
