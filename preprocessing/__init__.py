"""af2cpu.preprocessing: input, search tools, parsers, templates, features."""
