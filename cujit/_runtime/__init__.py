"""The private runtime of cujit: one module per concern (see each module's docstring)."""
