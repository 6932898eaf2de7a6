from memwarden.config.loader import ConfigError, load_config, locate_and_load, parse_config
from memwarden.config.schema import AlertsConfig, Config, DaemonConfig, HostConfig

__all__ = [
    "AlertsConfig", "Config", "ConfigError", "DaemonConfig", "HostConfig",
    "load_config", "locate_and_load", "parse_config",
]
