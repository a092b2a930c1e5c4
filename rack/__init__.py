"""rack: the domain of a self-hosted build service that speaks the Convox rack API."""

# The one version string: the package's (pyproject reads it), `convox --version`, `GET /system`, user agents.
# It sorts above Convox's date versions ("20180708231844"), as Convox's CLI requires of a current rack.
__version__ = "3.0.0"
