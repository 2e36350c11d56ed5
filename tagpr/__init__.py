"""TagPR: personalization reasoning with tagged thoughts, trained by multi-stage RL.

This package is the method itself (tags, LaMP data and metrics, synthetic users, rewards,
models, configs) and imports no Ray: it is usable and testable without a cluster.
"""

__version__ = "0.1.0"
