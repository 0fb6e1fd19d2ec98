"""The search's stages, one module each, in the order :class:`hwdnal.search.DnalSearch`
runs them over one :class:`~hwdnal.stages.context.StageContext`:

target (LUT, dense latency, budget) -> weights -> architecture -> prune (fit, measured) ->
finetune -> compile (build, check, measure, verdict) -> result.json
"""
