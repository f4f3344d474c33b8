"""Tooling around the runtime: the command line, the demo, the benchmarks and the clangd configuration.

Nothing in ``cujit._runtime`` imports from here; these modules use the runtime the way a user would, plus a few
of its internals that a tool legitimately needs (the cache folder layout, the toolchain's header folders).
"""
