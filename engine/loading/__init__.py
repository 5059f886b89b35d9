"""Reading machine files: the only YAML loader and the registry of participant types."""
