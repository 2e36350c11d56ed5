"""Supervised fine-tuning on tagged chains: tokenization with assistant-only labels, the loss, evaluation."""
