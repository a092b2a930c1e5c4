"""The `convox` command: a thin HTTP client of the rack API."""
