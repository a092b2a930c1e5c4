"""The Docker engine as the pipeline sees it: build, pull, tag, push; engine errors become build errors.

`classic` drives the engine's classic builder through the docker SDK; `stream` reads the engine's JSON
event streams (progress, errors). May import only the rack's base modules (config, errors, reasons).
"""
