"""The PRMU reward service: a Ray Serve application with a FastAPI ingress, and its client."""
