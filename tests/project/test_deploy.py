"""The deployment files: Dockerfile, deploy/compose.yaml, deploy/kubernetes.yaml, deploy/rollback-bot.service.

No container engine runs here, so each file is parsed (PyYAML for the YAML, systemd-analyze for the unit) and
checked for what the bot needs: every setting `serve` requires is provided, secrets come from secrets (never
a literal in the file), the process runs as a non-root user, and health is probed on /healthz.
"""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import sys
import typing
from pathlib import Path

import pytest
import yaml
from pydantic import SecretStr

from core.settings import SERVE_REQUIRED, Settings, load_settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
#: What `serve` needs in HTTP mode (the signing secret is required unless Socket Mode is used).
REQUIRED = sorted({*SERVE_REQUIRED, "slack_signing_secret"})
#: Settings typed SecretStr: they must come from a secret store.
SECRETS = sorted(name for name, f in Settings.model_fields.items()
                 if f.annotation is SecretStr or SecretStr in typing.get_args(f.annotation))
#: Values that look like a real secret.
LITERAL_SECRET = re.compile(r"xox[abp]-[A-Za-z0-9]|xapp-[A-Za-z0-9]|postgres(?:ql)?://[^\s:/@]+:[^\s@$]+@")
PORT = Settings.model_fields["port"].default


def test_the_settings_lists_are_what_serve_needs() -> None:
    assert {"slack_bot_token", "slack_signing_secret", "database_url", "incident_channel", "approvers"} <= set(REQUIRED)
    assert {"slack_bot_token", "slack_signing_secret", "database_url", "smtp_url"} <= set(SECRETS)
    assert "incident_channel" not in SECRETS


# --------------------------------------------------------------------------------------------- Dockerfile


def dockerfile_instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        op, _, args = (buf + line).partition(" ")
        out.append((op.upper(), " ".join(args.split())))
        buf = ""
    assert not buf, "a continuation line ends the Dockerfile"
    return out


def test_dockerfile_runs_serve_as_non_root_with_a_healthcheck_and_only_the_runtime_lock() -> None:
    text = (ROOT / "Dockerfile").read_text()
    ins = dockerfile_instructions(text)
    last_from = max(i for i, (op, _) in enumerate(ins) if op == "FROM")
    final = ins[last_from:]
    assert re.fullmatch(r"python:3\.1[1-9]-slim(-\w+)?", final[0][1]), final[0]
    users = [(i, args) for i, (op, args) in enumerate(final) if op == "USER"]
    assert users, "the image must drop root"
    user = users[-1][1].split(":")[0]
    assert user not in ("root", "0") and user.strip(), user
    start = [i for i, (op, _) in enumerate(final) if op in ("ENTRYPOINT", "CMD")]
    assert start and users[-1][0] < min(start), "USER must come before the process starts"
    health = [args for op, args in final if op == "HEALTHCHECK"]
    assert len(health) == 1 and "/healthz" in health[0] and "CMD" in health[0]
    entry = " ".join(args for op, args in final if op in ("ENTRYPOINT", "CMD"))
    assert '"rollback-bot"' in entry and '"serve"' in entry
    assert ("EXPOSE", str(PORT)) in final

    runs = " ".join(args for op, args in ins if op == "RUN")
    assert "--require-hashes -r /tmp/requirements.lock" in runs
    assert "requirements-test" not in text and "[test]" not in text and "pytest" not in text
    # nothing secret is baked in: no secret setting in ENV/ARG, no literal token or password
    baked = " ".join(args for op, args in ins if op in ("ENV", "ARG", "LABEL"))
    for name in SECRETS:
        assert name.upper() not in baked.upper(), name
    assert not LITERAL_SECRET.search(str(ins))
    # everything it copies exists, and the build context leaves out .env, secrets, venvs and local data
    for op, args in ins:
        if op == "COPY" and not args.startswith("--from"):
            for src in args.split()[:-1]:
                assert (ROOT / src).exists(), src
    ignore = [ln.strip() for ln in (ROOT / ".dockerignore").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    assert ignore[0] == "*", "the context starts from nothing and lists what it needs"
    included = [ln[1:] for ln in ignore if ln.startswith("!")]
    assert not [p for p in included if p.startswith((".env", ".venv", ".local", "deploy", "tests", "secrets"))]


# --------------------------------------------------------------------------------------------- compose


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def test_compose_runs_the_bot_and_postgresql_with_every_required_setting_secrets_as_files(tmp_path) -> None:
    doc = _compose()
    bot, db = doc["services"]["bot"], doc["services"]["db"]
    assert db["image"].startswith("postgres:")
    assert bot["depends_on"]["db"]["condition"] == "service_healthy"
    assert bot["build"]["context"] == ".." and (DEPLOY / bot["build"]["context"] / "Dockerfile").is_file()
    assert str(bot["user"]).split(":")[0] not in ("0", "root")
    assert "/healthz" in " ".join(bot["healthcheck"]["test"])
    assert "ALL" in bot["cap_drop"]

    env = {k.lower(): v for k, v in bot["environment"].items()}
    secrets = set(bot["secrets"])
    for name in REQUIRED:
        if name in SECRETS:
            assert name in secrets, f"{name} must come from a compose secret"
            assert set(doc["secrets"][name]) == {"file"}, name
        else:
            assert re.fullmatch(r"\$\{[A-Z_]+:\?[^}]+\}", str(env.get(name, ""))), \
                f"{name} must be required from the operator's environment, not written here"
    for name in SECRETS:
        assert name not in env, f"{name} is a secret: not in `environment`"
    assert "POSTGRES_PASSWORD" not in db["environment"] and db["environment"]["POSTGRES_PASSWORD_FILE"].startswith(
        "/run/secrets/")
    assert not LITERAL_SECRET.search(str(doc))  # comments may show examples; values may not

    # What the bot container gets is enough: secret files under /run/secrets plus the environment.
    for name in secrets:
        (tmp_path / name).write_text({"slack_bot_token": "xoxb-1", "database_url": "postgresql://u:p@db/x"}.get(
            name, "s3cret") + "\n")
    operator = {"INCIDENT_CHANNEL": "C0123", "APPROVERS": "U1 U2"}  # what `docker compose` must be given

    def interpolate(value: str) -> str:  # ${NAME:?message} / ${NAME:-default}, as compose does
        return re.sub(r"\$\{(\w+):([?-])([^}]*)\}",
                      lambda m: operator[m[1]] if m[2] == "?" else operator.get(m[1], m[3]), value)

    container_env = {k.lower(): interpolate(str(v)) for k, v in bot["environment"].items()}
    settings = load_settings(secrets_dir=tmp_path, **container_env)
    settings.require(*REQUIRED)
    assert settings.slack_bot_token.get_secret_value() == "xoxb-1" and settings.approvers == ["U1", "U2"]


# --------------------------------------------------------------------------------------------- Kubernetes


def _kube() -> dict[str, dict]:
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes.yaml").read_text()) if d]
    return {d["kind"]: d for d in docs}


def test_kubernetes_runs_two_non_root_replicas_probed_on_healthz_with_secrets_from_a_secret() -> None:
    kinds = _kube()
    assert "Secret" not in kinds, "secrets are created apart (kubectl create secret), never written here"
    assert not LITERAL_SECRET.search(str(kinds))  # comments may show examples; values may not
    dep = kinds["Deployment"]
    assert dep["spec"]["replicas"] == 2
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    (container,) = pod["containers"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["args"] == ["serve"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    config = kinds["ConfigMap"]["data"]
    assert ports["http"] == int(config["PORT"])
    for probe in ("readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert get["path"] == "/healthz" and ports.get(get["port"], get["port"]) == int(config["PORT"]), probe

    from_secret = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    literal = {e["name"] for e in container["env"] if "value" in e}
    assert [r["configMapRef"]["name"] for r in container["envFrom"]] == [kinds["ConfigMap"]["metadata"]["name"]]
    for name in REQUIRED:
        key = name.upper()
        if name in SECRETS:
            assert key in from_secret and from_secret[key]["key"] == key, f"{key} must come from the Secret"
        else:
            assert str(config.get(key, "")).strip(), f"{key} must be set in the ConfigMap"
    for name in SECRETS:
        assert name.upper() not in literal and name.upper() not in config, name

    # The pod's environment (ConfigMap, and the Secret's keys) is enough for `serve`.
    env = {k.lower(): v for k, v in config.items()}
    env.update({k.lower(): {"SLACK_BOT_TOKEN": "xoxb-1", "DATABASE_URL": "postgresql://u:p@h/db"}.get(k, "s")
                for k in from_secret})
    load_settings(**env).require(*REQUIRED)
    volumes = {v["name"] for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    assert mounts[config["MODELS_DIR"]] in volumes and mounts[config["INCIDENTS_DIR"]] in volumes
    assert kinds["Service"]["spec"]["selector"] == dep["spec"]["selector"]["matchLabels"]


# --------------------------------------------------------------------------------------------- systemd


def _unit() -> configparser.ConfigParser:
    unit = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    unit.optionxform = str  # keys are case-sensitive
    unit.read_string((DEPLOY / "rollback-bot.service").read_text())
    return unit


def test_systemd_unit_runs_serve_as_a_service_user_with_settings_from_a_root_only_file() -> None:
    unit = _unit()
    service = unit["Service"]
    assert service["User"] not in ("root", "0") and service["User"]
    command = service["ExecStart"].split()
    assert command[0].startswith("/") and command[0].endswith("/rollback-bot") and command[1:] == ["serve"]
    assert service["Restart"] in ("on-failure", "always")
    assert service["EnvironmentFile"].startswith("/etc/")
    assert service["KillMode"] == "mixed" and service["NoNewPrivileges"] == "yes"
    assert unit["Install"]["WantedBy"] == "multi-user.target"
    text = (DEPLOY / "rollback-bot.service").read_text()
    for name in SECRETS:
        assert f"{name.upper()}=" not in text, f"{name} belongs in the EnvironmentFile, not the unit"


def test_systemd_analyze_verifies_the_unit(tmp_path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: apt-get install systemd"
    # The unit names the installed entry point; verify it against this checkout's.
    entry = Path(sys.executable).with_name("rollback-bot")
    assert entry.is_file(), entry
    text = (DEPLOY / "rollback-bot.service").read_text()
    assert "/opt/rollback-bot/bin/rollback-bot serve" in text
    copy = tmp_path / "rollback-bot.service"
    copy.write_text(text.replace("/opt/rollback-bot/bin/rollback-bot", str(entry)))
    r = subprocess.run([analyze, "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not (r.stdout + r.stderr).strip(), r.stdout + r.stderr


@pytest.mark.parametrize("broken", ["BogusKey=1\n", "Restart=sometimes\n"])
def test_systemd_analyze_would_catch_a_broken_unit(tmp_path, broken) -> None:
    """The check above can fail: a mistake in the unit is reported."""
    entry = Path(sys.executable).with_name("rollback-bot")
    text = (DEPLOY / "rollback-bot.service").read_text().replace("/opt/rollback-bot/bin/rollback-bot", str(entry))
    copy = tmp_path / "rollback-bot.service"
    copy.write_text(text.replace("[Service]\n", "[Service]\n" + broken))
    r = subprocess.run(["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60)
    assert (r.stdout + r.stderr).strip()
