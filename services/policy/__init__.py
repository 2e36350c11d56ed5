"""The policy service: the trained policy answering users, OpenAI-compatible, on Ray Serve."""
