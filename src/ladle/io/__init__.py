"""Checkpoint I/O: lazy reading, the atomic safetensors writer, manifests, hashing and the cache root."""
