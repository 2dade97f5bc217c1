"""Hydra configuration files of dm4isl (a package so that entry points find them with config_path="conf")."""

from pathlib import Path

#: The config tree itself (also reachable as ``./conf`` in a clone): scripts compose from it without Hydra's runtime.
CONF_DIR = Path(__file__).resolve().parent
