"""PRMU: the Personalization Reward Model with User Embeddings (docs/method.md section 4)."""
