"""The gating core: DNAL's channel gates, the gated model, the channel plan they act on,
and physical pruning. These constants are here, torch-free, so that the configuration can
name them without importing torch."""

#: DNAL keeps a channel when its gate exceeds this value at the end of the search.
KEEP_THRESHOLD = 0.9

#: The least a soft gate passes on. A gate sits before a ReLU, and ReLU'(0) = 0: a channel
#: multiplied by exactly 0 would get no gradient from the cross-entropy and never reopen.
#: Passing 1e-3 of it keeps ``g·relu(z) = relu(g·z)`` differentiable in g, so a closed
#: gate still hears what reopening it is worth (docs/benchmarks.md, section 6).
SOFT_FLOOR = 1e-3
