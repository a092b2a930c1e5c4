"""The Docker engine as the pipeline sees it: build, pull, tag, push; engine errors become build errors.

`buildkit` (the default builder) runs Debian's docker client with BuildKit and parses its plain progress;
`classic` drives the engine's classic builder through the docker SDK, and does the pulls, tags, pushes and
inspections for both; `stream` reads the engine's JSON event streams (progress, errors). May import only
the rack's base modules (config, errors, reasons) and `rack.pipeline.dockerfile` (reading a Dockerfile).
"""
