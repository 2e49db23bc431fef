"""Persistence: the job store (SQL) and the object store (files or S3)."""
