"""The cluster: its configuration (YAML -> frozen dataclasses) and how it is started on Ray."""

from runtime.cluster.config import ClusterConfig, PoolConfig, RayConfig
from runtime.cluster.schema import ConfigError, load_cluster_config, parse_cluster_config
from runtime.frontend.config import ServerConfig

__all__ = [
    "ClusterConfig",
    "ConfigError",
    "PoolConfig",
    "RayConfig",
    "ServerConfig",
    "load_cluster_config",
    "parse_cluster_config",
]
