"""Ray Serve applications: the PRMU reward service (FastAPI ingress) and its client."""
