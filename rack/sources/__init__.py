"""Content-addressed sources: an app's file contents kept under their sha256, and trees that name them.

A client lists the tree it would send (`tree`), uploads only the contents the rack lacks (`contents`), and
gets a `manifest://<app>/<digest>` URL to build from; a worker assembles the tree from the stored contents
(`assemble`), or updates the app's folder kept on the worker in place (`worktree`). `sweep` removes
contents no recent build needs. `contents`, `assemble` and `worktree` import `rack.pipeline` (a tree's
paths obey the extraction rules of `rack.pipeline.source`); `tree` imports neither, so `rack.builds` may
use it. Never Flask or Celery.
"""
