"""What the web process shares with the workers, and all it may import from `workers`.

Job names and how a job is enqueued (`queue`), settings and their parsers (with the tag
policy's, `policy`), the allow-list, logging, the error tree, and the audit and metrics writers.
Everything here is safe to import in the web process: no GitLab or registry client, no job
code. `tests/test_layout.py` holds the web side to it.
"""
