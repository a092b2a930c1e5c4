"""rack: the domain of a self-hosted build service that speaks the Convox rack API."""
