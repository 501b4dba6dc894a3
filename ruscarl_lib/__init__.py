"""RuscaRL suite library. `__version__` matches pyproject.toml (a test checks it); run
fingerprints include it, so a new release does not silently continue an older release's run."""

__version__ = "0.1.0"
