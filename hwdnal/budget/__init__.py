"""Landing a search on a latency budget, in the order the search uses the pieces:

- :mod:`~hwdnal.budget.spec`: ``20ms``, ``800us``, ``50%`` or ``0.5x`` parsed and resolved;
- :mod:`~hwdnal.budget.target`: the target's LUT, dense and smallest latency, budget in ms;
- :mod:`~hwdnal.budget.term`: the architecture stage's adaptive latency term;
- :mod:`~hwdnal.budget.reach`: networks measured together; the smallest reachable one;
- :mod:`~hwdnal.budget.fit`: the gates turned into channel counts at a latency, by the LUT;
- :mod:`~hwdnal.budget.measure`: that fit measured on the device and corrected, and the
  final measurement the verdict is judged on.

Only the torch-free spec is imported here, so parsing a budget stays instant.
"""

from hwdnal.budget.spec import Budget, parse_budget

__all__ = ["Budget", "parse_budget"]
