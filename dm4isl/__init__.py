"""dm4isl: in-silico labelling of 3-D brightfield z-stacks with conditional diffusion models."""

__version__ = "0.1.0"
