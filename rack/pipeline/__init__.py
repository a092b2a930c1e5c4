"""One build on a worker, from the source object to the pushed images and the release.

`run` runs a claimed build and records its outcome; `steps` are its phases (fetch, extract, manifest,
build, push); `watch` heartbeats it and stops it on cancel or timeout; `source` fetches and safely extracts
the source; `manifest` reads convox.yml; `dockerfile` reads the ARGs a Dockerfile declares; `engine/`
holds the builders. May import `rack.builds`, `rack.logs` and the base modules; nothing imports it but
the worker and exports.
"""
