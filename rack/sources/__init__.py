"""Content-addressed sources: an app's file contents kept under their sha256, and trees that name them.

A client lists the tree it would send (`tree`), uploads only the contents the rack lacks (`contents`), and
gets a `manifest://<app>/<digest>` URL to build from; a worker assembles the tree from the stored contents
(`assemble`). `sweep` removes contents no recent build needs. `contents` and `assemble` import
`rack.pipeline.source` (a tree's paths obey the extraction rules); `tree` imports neither, so `rack.builds`
may use it. Never Flask or Celery.
"""
