"""The Kotta HTTP service: API, auth, queues, dispatch to dask.distributed."""
