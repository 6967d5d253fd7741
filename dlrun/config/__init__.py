"""Config files: YAML with positions, schema validation, defaults, the resolved config."""

from dlrun.config.loader import Located, load_yaml_file, load_yaml_text
from dlrun.config.schema import Config, load_config, parse_config

__all__ = ["Config", "Located", "load_config", "load_yaml_file", "load_yaml_text", "parse_config"]
