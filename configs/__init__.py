"""Hydra configuration files of af2cpu (package data: `af2cpu.configs`)."""
