"""Exception types that name the offending file, the value found and the value expected."""


class DataError(ValueError):
    """Input data (a TIFF, a folder, a manifest) is missing, unreadable or not what was expected."""


class CheckpointError(ValueError):
    """A checkpoint is missing, of another model type, or does not match the input it is applied to."""


class ConfigError(ValueError):
    """A setting (config value, option, command-line override) is invalid: names the key, value and valid choices."""
