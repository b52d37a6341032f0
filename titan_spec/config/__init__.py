from .loader import ConfigError, load_config, resolve_config_path, to_dict, to_toml
from .schema import JobConfig

__all__ = ["ConfigError", "JobConfig", "load_config", "resolve_config_path", "to_dict", "to_toml"]
