"""Asynchronous RL bookkeeping without Ray: trajectories, the prompt cursor, staleness and back-pressure."""
