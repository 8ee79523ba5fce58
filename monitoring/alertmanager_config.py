"""Render ``monitoring/alertmanager/alertmanager.yml`` (a template) into the file Alertmanager
reads, with receiver URLs and credentials from the environment or the settings.

``${NAME}`` is required where it stands: a receiver entry (an item of a ``*_configs`` list)
whose required variable is unset or empty is left out, anywhere else it is an error.
``${NAME:-}`` is optional (unset: the key is left out) and ``${NAME:-text}`` has a default.
The template is parsed before substitution and dumped after it, so a value can never change
the YAML structure. The rendered text holds secrets: ``write_alertmanager_config`` writes
it readable by its owner only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

TEMPLATE = Path(__file__).resolve().parent / "alertmanager" / "alertmanager.yml"

# The variables the template uses; AlertmanagerSettings field = name minus the prefix, lowercased.
ENV_PREFIX = "FRAUDRAY_ALERTMANAGER_"
ENV_NAMES = tuple(
    ENV_PREFIX + n
    for n in (
        "WEBHOOK_URL",
        "SLACK_API_URL",
        "SLACK_CHANNEL",
        "EMAIL_TO",
        "SMTP_FROM",
        "SMTP_SMARTHOST",
        "SMTP_USERNAME",
        "SMTP_PASSWORD",
    )
)

_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_DROP = object()


class AlertmanagerConfigError(ValueError):
    """The template needs a variable that is not set, outside any receiver entry."""


class _Missing(Exception):  # internal control flow, never escapes this module
    def __init__(self, name: str) -> None:
        super().__init__(name)
        self.name = name


def _scalar(text: str, env: Mapping[str, str]) -> object:
    whole = _PLACEHOLDER.fullmatch(text)
    if whole and whole.group(2) == "" and not env.get(whole.group(1)):
        return _DROP  # optional and unset: leave the key out

    def value(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        if env.get(name):
            return env[name]
        if default is None:
            raise _Missing(name)
        return default

    return _PLACEHOLDER.sub(value, text)


def _render(node: object, env: Mapping[str, str], key: str, dropped: list[str]) -> object:
    if isinstance(node, str):
        return _scalar(node, env)
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for k, v in node.items():
            r = _render(v, env, str(k), dropped)
            # Leave out optional keys that are unset and receiver lists that lost every entry.
            if r is not _DROP and not (str(k).endswith("_configs") and r == []):
                out[k] = r
        return out
    if isinstance(node, list):
        items: list[object] = []
        for item in node:
            try:
                items.append(_render(item, env, key, dropped))
            except _Missing as exc:
                if not key.endswith("_configs"):
                    raise
                dropped.append(f"{key} ({exc.name} is not set)")
        return items
    return node


def render_alertmanager_config(template_text: str, env: Mapping[str, str]) -> str:
    """The Alertmanager configuration for ``env`` (pure: no file or environment is read)."""
    dropped: list[str] = []
    try:
        doc: Any = _render(yaml.safe_load(template_text), env, "", dropped)
    except _Missing as exc:
        raise AlertmanagerConfigError(f"the Alertmanager template needs {exc.name}") from None
    channels = [
        f"{r['name']}: {', '.join(k for k, v in r.items() if k.endswith('_configs') and v) or 'none'}"
        for r in doc.get("receivers", [])
    ]
    header = [
        "# Rendered by monitoring/alertmanager_config.py; do not edit.",
        "# Channels: " + "; ".join(channels),
        "# Left out: " + ("; ".join(sorted(set(dropped))) or "nothing"),
    ]
    return "\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False, allow_unicode=True)


def env_from_settings(section: object) -> dict[str, str]:
    """``FRAUDRAY_ALERTMANAGER_*`` values from an ``AlertmanagerSettings``-like object: each
    field named like the variable without the prefix, lowercased (``webhook_url``);
    ``SecretStr`` values are unwrapped, absent or empty fields are skipped."""
    out: dict[str, str] = {}
    for name in ENV_NAMES:
        value = getattr(section, name.removeprefix(ENV_PREFIX).lower(), None)
        if value is not None and hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        if value:
            out[name] = str(value)
    return out


def write_alertmanager_config(
    dest: Path, env: Mapping[str, str] | None = None, template: Path = TEMPLATE
) -> str:
    """Render ``template`` with ``env`` (default: ``os.environ``) into ``dest``, mode 0600."""
    text = render_alertmanager_config(template.read_text(), os.environ if env is None else env)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)
    tmp.replace(dest)
    return text
