"""The detection microservice (FastAPI)."""
