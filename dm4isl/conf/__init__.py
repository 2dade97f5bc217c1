"""Hydra configuration files of dm4isl (a package so that entry points find them with config_path="conf")."""
