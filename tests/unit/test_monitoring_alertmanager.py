"""Rendering the Alertmanager template: channels from the environment, no secret in the repo,
values that cannot change the YAML, and the result accepted and routed by the real `amtool`."""

from __future__ import annotations

import re
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from monitoring.alertmanager_config import (
    ENV_NAMES,
    TEMPLATE,
    AlertmanagerConfigError,
    env_from_settings,
    render_alertmanager_config,
    write_alertmanager_config,
)

AMTOOL = shutil.which("amtool")
P = "FRAUDRAY_ALERTMANAGER_"
FULL_ENV = {
    P + "WEBHOOK_URL": "http://127.0.0.1:5001/hook",
    P + "SLACK_API_URL": "https://hooks.slack.example/services/T0/B0/xyz",
    P + "SLACK_CHANNEL": "#fraud-oncall",
    P + "EMAIL_TO": "oncall@example.com",
    P + "SMTP_FROM": "alertmanager@example.com",
    P + "SMTP_SMARTHOST": "smtp.example.com:587",
    P + "SMTP_USERNAME": "alertmanager",
    P + "SMTP_PASSWORD": "s3cr3t: {not yaml}",
}


def _receivers(text: str) -> dict[str, dict[str, object]]:
    return {r["name"]: r for r in yaml.safe_load(text)["receivers"]}


def _amtool(*args: str) -> str:
    if AMTOOL is None:
        pytest.skip("amtool is not installed (make setup)")
    out = subprocess.run([AMTOOL, *args], capture_output=True, text=True, check=False)
    assert out.returncode == 0, f"amtool {' '.join(args)}:\n{out.stdout}{out.stderr}"
    return out.stdout


def _scalars(node: object, key: str = "") -> list[tuple[str, object]]:
    if isinstance(node, dict):
        return [kv for k, v in node.items() for kv in _scalars(v, str(k))]
    if isinstance(node, list):
        return [kv for item in node for kv in _scalars(item, key)]
    return [(key, node)]


def test_template_names_every_variable_it_uses_and_holds_no_secret() -> None:
    values = _scalars(yaml.safe_load(TEMPLATE.read_text()))  # comments left aside
    used = {m for _k, v in values for m in re.findall(r"\$\{(\w+)", str(v))}
    assert used == set(ENV_NAMES)
    for key, value in values:
        if key in {"url", "api_url", "auth_password", "auth_username", "smarthost", "to", "from", "channel"}:
            assert str(value).startswith("${"), f"{key}: {value} is not a placeholder"


def test_without_env_every_receiver_is_silent_and_the_config_is_valid(tmp_path: Path) -> None:
    text = render_alertmanager_config(TEMPLATE.read_text(), {})
    assert all(set(r) == {"name"} for r in _receivers(text).values())
    assert "# Channels: default: none; critical: none; warning: none" in text
    (tmp_path / "am.yml").write_text(text)
    _amtool("check-config", str(tmp_path / "am.yml"))


def test_full_env_enables_every_channel_and_amtool_accepts_it(tmp_path: Path) -> None:
    text = render_alertmanager_config(TEMPLATE.read_text(), FULL_ENV)
    rec = _receivers(text)
    assert rec["default"]["webhook_configs"] == [{"url": FULL_ENV[P + "WEBHOOK_URL"], "send_resolved": True}]
    email = rec["critical"]["email_configs"][0]  # type: ignore[index]
    assert email["auth_password"] == FULL_ENV[P + "SMTP_PASSWORD"]  # a string, not YAML
    assert rec["warning"]["slack_configs"][0]["channel"] == "#fraud-oncall"  # type: ignore[index]
    assert "email_configs" not in rec["warning"]
    (tmp_path / "am.yml").write_text(text)
    _amtool("check-config", str(tmp_path / "am.yml"))


def test_incomplete_channels_are_left_out_and_optional_keys_dropped() -> None:
    env = {
        k: v
        for k, v in FULL_ENV.items()
        if not k.endswith(("SLACK_API_URL", "SMTP_USERNAME", "SMTP_PASSWORD"))
    }
    env[P + "SLACK_CHANNEL"] = ""  # empty counts as unset
    text = render_alertmanager_config(TEMPLATE.read_text(), env)
    rec = _receivers(text)
    assert "slack_configs" not in rec["critical"] and "slack_configs" not in rec["warning"]
    email = rec["critical"]["email_configs"][0]  # type: ignore[index]
    assert "auth_username" not in email and "auth_password" not in email  # relay without auth
    assert f"slack_configs ({P}SLACK_API_URL is not set)" in text.splitlines()[2]


def test_values_cannot_change_the_yaml_structure() -> None:
    evil = "http://x/\nroute:\n  receiver: evil\n"
    doc = yaml.safe_load(render_alertmanager_config(TEMPLATE.read_text(), {P + "WEBHOOK_URL": evil}))
    assert doc["route"]["receiver"] == "default"
    assert doc["receivers"][0]["webhook_configs"][0]["url"] == evil


def test_required_variable_outside_a_receiver_entry_is_an_error() -> None:
    with pytest.raises(AlertmanagerConfigError, match="SMTP_HOST"):
        render_alertmanager_config("global:\n  smtp_smarthost: ${SMTP_HOST}\n", {})
    assert "smtp.local:25" in render_alertmanager_config(
        "global:\n  smtp_smarthost: ${SMTP_HOST:-smtp.local:25}\n", {}
    )


@pytest.mark.parametrize(
    ("labels", "receiver"),
    [
        (["alertname=HighFraudRate", "severity=critical"], "critical"),
        (["alertname=ConsumerLagHigh", "severity=warning"], "warning"),
        (["alertname=Watchdog"], "default"),
    ],
)
def test_routes_by_severity(tmp_path: Path, labels: list[str], receiver: str) -> None:
    path = tmp_path / "am.yml"
    path.write_text(render_alertmanager_config(TEMPLATE.read_text(), FULL_ENV))
    out = _amtool("config", "routes", "test", f"--config.file={path}", *labels)
    assert out.split() == [receiver]


def test_written_file_is_private(tmp_path: Path) -> None:
    dest = tmp_path / "alertmanager" / "alertmanager.yml"
    write_alertmanager_config(dest, FULL_ENV)
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert FULL_ENV[P + "SMTP_PASSWORD"] in dest.read_text()
    assert not list(dest.parent.glob("*.tmp"))


def test_env_from_settings_unwraps_secrets_and_skips_empty_fields() -> None:
    class Section:
        webhook_url = SecretStr("http://hook")
        slack_api_url = SecretStr("")
        slack_channel = "#x"
        smtp_password = None

    assert env_from_settings(Section()) == {P + "WEBHOOK_URL": "http://hook", P + "SLACK_CHANNEL": "#x"}


def test_every_template_variable_is_an_alertmanager_setting() -> None:
    from core.settings import AlertmanagerSettings

    fields = set(AlertmanagerSettings.model_fields)
    assert {n.removeprefix(P).lower() for n in ENV_NAMES} <= fields
    section = AlertmanagerSettings(webhook_url=SecretStr("http://hook"), smtp_password=SecretStr("pw"))
    assert env_from_settings(section) == {P + "WEBHOOK_URL": "http://hook", P + "SMTP_PASSWORD": "pw"}
