"""Data shipped with af2cpu: the bundled mini databases and example queries."""

from pathlib import Path

DATA_DIR = Path(__file__).resolve().parent
MINI_DB_ROOT = DATA_DIR / "mini"
EXAMPLES_DIR = DATA_DIR / "examples"
