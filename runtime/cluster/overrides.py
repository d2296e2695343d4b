"""What overrides a cluster file: `TANDEM_<SECTION>__<FIELD>` environment variables, then the
command line's flags; and the resolved configuration as an operator reviews it."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping

import yaml

from runtime.cluster.config import ClusterConfig

ENV_PREFIX = "TANDEM_"
MASK = "***"


class OverrideError(ValueError):
    """An override that cannot be read; the message names it."""


def env_overrides(environ: Mapping[str, str]) -> dict:
    """The file's fields that `TANDEM_*` variables set: `TANDEM_SERVER__HTTP_PORT=9000` is
    `{"server": {"http_port": 9000}}`, `TANDEM_POOLS__DECODE__REPLICAS=2` a pool's field.
    Values are YAML scalars or lists ("2", "true", "null", "[a, b]"). Only names with a "__"
    count: every field sits in a section, and the plain variables (TANDEM_HOME,
    TANDEM_API_KEY, ...) are no fields."""
    out: dict = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise OverrideError(f"{name}={raw!r} is not a YAML value: {e}") from None
        *sections, field = name[len(ENV_PREFIX) :].lower().split("__")
        node = out
        for section in sections:
            node = node.setdefault(section, {})
        node[field] = value
    return out


def merged(base: dict, override: dict) -> dict:
    """`base` with `override`'s leaves replacing its own (sections merge, key by key)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def resolved_view(config: ClusterConfig) -> dict:
    """Everything `config` resolved to, defaults filled in and secrets masked, with the
    engine config each pool's workers get: what `tandem serve --print-config` shows. The
    engine settings as given (shared and per pool) list only what was set."""
    view = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    view["kv"]["secret"] = MASK
    if view["api_key"]:
        view["api_key"] = MASK
    # The model's dtype and device are engine settings: each pool's are under `workers`.
    view["model"] = {k: view["model"][k] for k in ("path", "max_model_len")}
    view["pools"] = [p for p in view["pools"] if p["replicas"]]
    for settings in [view["engine"], *(p["engine"] for p in view["pools"])]:
        for name in [k for k, v in settings.items() if v is None]:
            del settings[name]
    view["workers"] = {
        p.role: {"replicas": p.replicas, "engine": dataclasses.asdict(config.engine_config(p.role))}
        for p in config.pools
        if p.replicas
    }
    return view
