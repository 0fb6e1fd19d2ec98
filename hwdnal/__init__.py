"""hwdnal: prune a CNN with DNAL until it meets a latency budget measured on a real device."""

__version__ = "0.1.0"
