"""The job runner: one job, start to end, inside a dask worker.

It imports nothing from the client or the server: it speaks to the server
over HTTP with the dispatch token of its attempt.
"""
