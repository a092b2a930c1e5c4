"""Parameterised SQL, one module per resource; functions never commit."""
