"""The Ray roles of TagPR: policy learner, vLLM rollout workers, trajectory buffer, weight sync,
and the controller that wires them. The method they run lives in ``tagpr/`` (no Ray there)."""
