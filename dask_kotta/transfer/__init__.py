"""Moving files over HTTP, for the runner and the client alike.

- :mod:`.common`: one session factory, timeouts, the retry of transient
  failures, parallel parts, and ``StagingError``, the one error raised;
- :mod:`.upload`: ``send_file``, a file sent the way the server's upload
  plan says (presigned PUT, multipart, or through the server).

The runner fetches inputs (``runner/stage_in.py``) and uploads outputs
(``runner/stage_out.py``) with these; ``Kotta.upload_file`` uploads with
``send_file``, so the client never imports the runner.
"""
