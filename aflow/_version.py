"""aflow's version (pyproject.toml's), where modules below the package can read it."""

__version__ = "0.1.0.dev0"
