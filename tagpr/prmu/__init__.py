"""PRMU: the Personalization Reward Model with User Embeddings (TAGPR.md section 4)."""
