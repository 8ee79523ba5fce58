"""No secret, password or token in the repository: every tracked (and not-ignored new) file is
scanned for provider token formats, private keys, credentials inside URLs and hard-coded
password/token/key assignments. The only literals allowed are the clearly marked throwaway
defaults of the local stack and the test suite, listed in ``ALLOWED`` with the reason."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from pydantic import SecretStr

from core.settings import REPO_ROOT, Settings

# Provider formats: a match is a secret whatever the context.
TOKEN_PATTERNS = {
    "AWS access key id": r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b",
    "private key block": r"-----BEGIN (?:RSA |EC |DSA |OPENSSH |PGP |ENCRYPTED )?PRIVATE KEY",
    "GitHub token": r"\b(?:ghp|gho|ghu|ghs|ghr)_[A-Za-z0-9]{36}\b|\bgithub_pat_[A-Za-z0-9_]{40,}",
    "Slack token": r"\bxox[abposr]-[A-Za-z0-9-]{10,}",
    "Slack webhook": r"hooks\.slack\.com/services/T[A-Za-z0-9]+/B[A-Za-z0-9]+/[A-Za-z0-9]+",
    "Google API key": r"\bAIza[0-9A-Za-z_-]{35}\b",
    "OpenAI/Anthropic key": r"\bsk-(?:ant-|proj-)?[A-Za-z0-9_-]{32,}",
    "Stripe live key": r"\b[rs]k_live_[0-9A-Za-z]{16,}",
    "JSON web token": r"\beyJ[A-Za-z0-9_-]{10,}\.eyJ[A-Za-z0-9_-]{10,}\.[A-Za-z0-9_-]{10,}",
}
# user:password@ inside a URL/DSN (the password group must not be a placeholder).
URL_CREDENTIAL = re.compile(r"[a-z][a-z0-9+.-]*://[^\s:/@'\"]*:(?P<value>[^\s@/'\"]+)@", re.IGNORECASE)
# password = "…", "token": "…", API_KEY=… (a quoted or bare literal of 6+ characters).
ASSIGNMENT = re.compile(
    r"(?P<name>[A-Za-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|apikey|auth)[A-Za-z0-9_]*)"
    r"[\"']?\s*[:=](?!=)\s*(?P<quote>[\"']?)(?P<value>[^\s\"',;)}]{6,})(?P=quote)",
    re.IGNORECASE,
)
# Values that are placeholders, not secrets (for URLs and quoted literals) ...
PLACEHOLDER = re.compile(
    r"^(?:\$\{?[A-Za-z_][A-Za-z0-9_]*\}?|<[^>]*>|\{\{.*\}\}|\$\(.*|PASSWORD|REPLACE[-_A-Z]*|CHANGE[-_A-Z]*"
    r"|xxx+|\*+|\.\.\.|…|example[-_a-z]*|your[-_a-z]*)$",
    re.IGNORECASE,
)
# ... and, unquoted, references in code: ``token = ensure_token()``, ``key=settings.api.keys``.
CODE_REFERENCE = re.compile(r"^(?:[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*(?:\(.*)?|\[.*)$")
# path -> literal values allowed there, and why.
ALLOWED: dict[str, dict[str, str]] = {
    "tests/helpers.py": {"test-key-for-the-suite": "the suite's throwaway API key for private test apps"},
    "tests/integration/test_deploy_serve.py": {
        "deploy-test-key": "throwaway API key of the test's private Serve app",
        "not-the-token": "a deliberately wrong Ray token (the test expects a refusal)",
    },
    "tests/integration/test_multinode.py": {"not-the-token": "a deliberately wrong Ray token"},
    "tests/unit/test_settings.py": {
        "pw": "sample DSN proving settings never print a password",
        "hunter2": "sample DSN proving settings never print a password",
    },
    "tests/unit/test_deploy_compose.py": {"test-key": "throwaway API key to render the compose file"},
    "tests/integration/test_init.py": {
        "pw": "sample credentials of external services at hosts that do not exist (.invalid)",
    },
    "tests/unit/test_deploy_kuberay.py": {"fraudray-ray-token": "the name of a Kubernetes Secret, no value"},
}
# Not text, or machine-written.
SKIP_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif", ".ico", ".parquet", ".gz", ".zip", ".jar", ".pdf")
SKIP_PATHS = {"tests/unit/test_secrets_scan.py"}  # its patterns, and the planted samples below


def repo_files() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO_ROOT, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return [REPO_ROOT / p for p in out.stdout.split("\0") if p and not p.endswith(SKIP_SUFFIXES)]


def scan_text(rel: str, text: str) -> list[str]:
    """Findings in one file, as ``path:line: kind: snippet``."""
    findings: list[str] = []
    allowed = ALLOWED.get(rel, {})
    for lineno, line in enumerate(text.splitlines(), 1):
        for kind, pattern in TOKEN_PATTERNS.items():
            if re.search(pattern, line):
                findings.append(f"{rel}:{lineno}: {kind}: {line.strip()[:120]}")
        for m in URL_CREDENTIAL.finditer(line):
            value = m.group("value")
            if not PLACEHOLDER.match(value) and value not in allowed:
                findings.append(f"{rel}:{lineno}: password in a URL: {line.strip()[:120]}")
        for m in ASSIGNMENT.finditer(line):
            value = m.group("value")
            if PLACEHOLDER.match(value) or value in allowed:
                continue
            if not m.group("quote") and (CODE_REFERENCE.match(value) or not re.search(r"\d", value)):
                continue  # code, or a bare word without digits (prose, ``mode: token``)
            findings.append(f"{rel}:{lineno}: hard-coded {m.group('name')}: {line.strip()[:120]}")
    return findings


def test_the_repository_holds_no_secrets() -> None:
    files = repo_files()
    assert len(files) > 50, "git ls-files found too few files: not a checkout?"
    findings: list[str] = []
    for path in files:
        rel = path.relative_to(REPO_ROOT).as_posix()
        if rel in SKIP_PATHS or not path.is_file():
            continue
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        findings += scan_text(rel, text)
    assert not findings, "secrets in the repository:\n" + "\n".join(findings)


def test_allowed_literals_still_exist_and_are_marked() -> None:
    """An allow-list entry must point at a literal that is there (no stale exceptions)."""
    for rel, values in ALLOWED.items():
        text = (REPO_ROOT / rel).read_text()
        for value in values:
            assert value in text, f"{rel} no longer holds {value!r}: drop it from ALLOWED"


def test_the_scanner_finds_planted_secrets() -> None:
    # Built at run time so that this file itself holds none of them.
    planted = {
        "AWS access key id": "aws_key = " + "AKIA" + "Q" * 16,
        "private key block": "-----BEGIN " + "RSA PRIVATE KEY-----",
        "GitHub token": "ghp_" + "a1B2" * 9,
        "Slack webhook": "https://hooks.slack.com/services/" + "T0123/B0456/abcdefXYZ",
        "OpenAI/Anthropic key": "sk-" + "x9" * 20,
        "password in a URL": "postgresql://fraudray:" + "s3cretpw" + "@db:5432/fraudray",
        "hard-coded": "SMTP_PASSWORD = '" + "hunter22" + "'",
    }
    for kind, line in planted.items():
        assert any(kind in f for f in scan_text("planted.py", line)), (kind, line)
    for harmless in (
        "dsn = 'postgresql://fraudray@127.0.0.1:5432/fraudray'",
        "rediss://:PASSWORD@fraudray-redis:6379/0",
        "api_key: SecretStr = SecretStr('')",
        "FRAUDRAY_API_KEYS=REPLACE-WITH-KEYS",
        "token = ensure_token()",
        "password=${SMTP_PASSWORD}",
    ):
        assert scan_text("harmless.py", harmless) == [], harmless


def test_credentials_come_only_from_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Alertmanager receivers, the LLM key, the API keys and the store DSNs: empty (or the local
    stack's passwordless loopback defaults) unless the environment sets them; typed as secrets,
    so that printing the settings never shows them."""
    for k in list(os.environ):
        if k.startswith("FRAUDRAY_"):
            monkeypatch.delenv(k)
    monkeypatch.chdir(tmp_path)  # no .env
    s = Settings()
    secret_fields = {
        "alertmanager": ("webhook_url", "slack_api_url", "smtp_password"),
        "llm": ("api_key",),
        "api": ("keys",),
    }
    for section, names in secret_fields.items():
        for name in names:
            value = getattr(getattr(s, section), name)
            assert isinstance(value, SecretStr), f"{section}.{name} must be a SecretStr"
            assert value.get_secret_value() == "", f"{section}.{name} has a default in the code"
    assert ":" not in urlsplit(s.postgres.dsn.get_secret_value()).netloc.split("@")[0]  # no password
    assert "@" not in s.redis.url.get_secret_value()

    planted = "planted-" + "x7" * 8
    monkeypatch.setenv("FRAUDRAY_ALERTMANAGER_SMTP_PASSWORD", planted)
    monkeypatch.setenv("FRAUDRAY_ALERTMANAGER_WEBHOOK_URL", f"https://hooks.example/{planted}")
    monkeypatch.setenv("FRAUDRAY_LLM_API_KEY", planted)
    s = Settings()
    assert s.alertmanager.smtp_password.get_secret_value() == planted
    assert s.llm.api_key.get_secret_value() == planted
    assert planted not in repr(s) and planted not in str(s.model_dump())
