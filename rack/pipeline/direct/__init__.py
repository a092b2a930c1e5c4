"""Images of copy-only Dockerfiles, written by the rack into the registry without an engine build."""
