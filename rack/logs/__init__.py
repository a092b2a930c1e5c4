"""A build's log: the live stream in Redis, reading it from any offset, and masking secrets in it.

`stream` writes and follows a build's Redis stream; `reader` serves a build's log from any byte offset (from
the stream while it runs, from the object store once it ended); `masking` hides secret values before a line
is written. May import the rack's base modules and `rack.builds.record`; never `rack.pipeline`.
"""
