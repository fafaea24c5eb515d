"""deploy/ stays true without a Docker engine or a cluster: the Dockerfile's stages, user, health check
and entrypoint; compose's services, secret and volume; the Kubernetes manifests (rendered with
`kubectl kustomize` when kubectl is installed, else loaded as YAML); the Grafana dashboard's SQL.
Every command they run must be a real `cost-worker` command, every COST_WORKER_* name a real
setting, every table and column a real one (and on PostgreSQL the dashboard's queries really run)."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import tomllib
from pathlib import Path
from typing import Any

import click
import pytest
import yaml
from sqlalchemy import text

from tests.conftest import PG_URL, private_pg_schema
from worker.cli import cli
from worker.settings import Settings, load_settings
from worker.storage.db import make_engine, upgrade
from worker.storage.tables import metadata

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
SETTING_ENV = {f"COST_WORKER_{name.upper()}" for name in Settings.model_fields} | {"COST_WORKER_CONFIG"}


def assert_real_command(argv: list[str]) -> None:
    """`cost-worker ARGS...` names an existing (sub)command of the click app."""
    ctx = click.Context(cli)
    group: click.Command = cli
    words = [a for a in argv if not a.startswith("-")]
    assert words, argv
    for word in words:
        assert isinstance(group, click.Group), argv
        sub = group.get_command(ctx, word)
        assert sub is not None, f"cost-worker has no command {word!r} ({argv})"
        group = sub
        if not isinstance(group, click.Group):
            break


def assert_real_settings(names: set[str]) -> None:
    unknown = {n for n in names if n.startswith("COST_WORKER_")} - SETTING_ENV
    assert not unknown, f"not settings: {sorted(unknown)}"


# --- Dockerfile -------------------------------------------------------------------------------------

def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        pending += line[:-1] + " " if line.endswith("\\") else line
        if not line.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for ins in instructions():
        if ins[0] == "FROM":
            result.append([])
        result[-1].append(ins)
    return result


class TestDockerfile:
    def test_multi_stage_slim_base_without_build_tools_in_the_final_image(self) -> None:
        """At least two stages; the final one is a slim Python and installs no compiler."""
        all_stages = stages()
        assert len(all_stages) >= 2
        final = all_stages[-1]
        assert re.match(r"python:3\.1[1-9][\w.-]*-slim", final[0][1]), final[0]
        final_runs = " ".join(args for ins, args in final if ins == "RUN")
        for tool in ("build-essential", "gcc", "apt-get install", "pip install"):
            assert tool not in final_runs, tool
        assert any(ins == "COPY" and "--from=" in args for ins, args in final)

    def test_runs_as_a_non_root_user(self) -> None:
        """The final stage's USER is set and is neither root nor uid 0."""
        users = [args for ins, args in stages()[-1] if ins == "USER"]
        assert users and users[-1].split(":")[0] not in ("root", "0")

    def test_entrypoint_is_a_real_cost_worker_command(self) -> None:
        """ENTRYPOINT + CMD is `cost-worker run`, the console script of pyproject.toml."""
        final = dict(stages()[-1])
        argv = json.loads(final["ENTRYPOINT"]) + json.loads(final["CMD"])
        assert argv == ["cost-worker", "run"]
        scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
        assert scripts["cost-worker"] == "worker.cli:main"
        assert_real_command(argv[1:])

    def test_healthcheck_probes_healthz(self) -> None:
        """HEALTHCHECK calls /healthz on COST_WORKER_HTTP_PORT."""
        (check,) = [args for ins, args in stages()[-1] if ins == "HEALTHCHECK"]
        assert "/healthz" in check and "COST_WORKER_HTTP_PORT" in check

    def test_environment_names_real_settings_and_a_secret_key_file(self) -> None:
        """Every COST_WORKER_* in ENV is a setting; the master key comes from a mounted secret file."""
        envs = " ".join(args for ins, args in stages()[-1] if ins == "ENV")
        names = set(re.findall(r"(COST_WORKER_[A-Z_]+)=", envs))
        assert_real_settings(names)
        assert "COST_WORKER_MASTER_KEY_FILE=/run/secrets/" in envs
        assert "COST_WORKER_MASTER_KEY=" not in envs

    def test_build_context_files_exist(self) -> None:
        """Everything COPY'd from the build context is in the repository."""
        for ins, args in instructions():
            if ins == "COPY" and "--from" not in args:
                for src in shlex.split(args)[:-1]:
                    assert (ROOT / src).exists(), src


# --- docker compose ---------------------------------------------------------------------------------

def compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    return loaded


class TestCompose:
    def test_worker_with_postgres_a_named_volume_and_the_master_key_secret(self) -> None:
        """worker + db, the db on a named volume, the key as a compose secret read via MASTER_KEY_FILE."""
        c = compose()
        worker, db = c["services"]["worker"], c["services"]["db"]
        assert db["image"].startswith("postgres:")
        volume = db["volumes"][0].split(":")[0]
        assert volume in c["volumes"]
        env = worker["environment"]
        assert env["COST_WORKER_DATABASE_URL"].startswith("postgresql+psycopg://")
        secret = worker["secrets"][0]
        assert secret in c["secrets"]
        assert env["COST_WORKER_MASTER_KEY_FILE"] == f"/run/secrets/{secret}"
        assert worker["command"] == ["run"]
        assert_real_command(worker["command"])

    def test_ui_token_is_a_mounted_secret_file(self) -> None:
        """The dashboard's token reaches `run` as COST_WORKER_UI_TOKEN_FILE, a compose secret read from a
        git-ignored file under deploy/secrets/; no literal COST_WORKER_UI_TOKEN anywhere in the file."""
        c = compose()
        worker = c["services"]["worker"]
        path = Path(worker["environment"]["COST_WORKER_UI_TOKEN_FILE"])
        assert path.parent == Path("/run/secrets") and path.name in worker["secrets"]
        source = DEPLOY / c["secrets"][path.name]["file"]
        assert source.parent == DEPLOY / "secrets" and source.name != "master.key"
        assert (DEPLOY / "secrets" / ".gitignore").read_text().split()[0] == "*"  # the token file is never committed
        assert "COST_WORKER_UI_TOKEN:" not in (DEPLOY / "docker-compose.yml").read_text()
        for service in c["services"].values():
            assert "COST_WORKER_UI_TOKEN" not in service.get("environment", {})

    def test_every_environment_name_is_a_setting(self) -> None:
        """Each service's COST_WORKER_* variables are real settings."""
        for service in compose()["services"].values():
            assert_real_settings(set(service.get("environment", {})))

    def test_one_off_cli_service_for_connect_and_sync_now(self) -> None:
        """A `cli` service under a profile runs one-off commands; the documented ones exist."""
        c = compose()
        assert "cli" in c["services"]["cli"]["profiles"]
        text = (DEPLOY / "docker-compose.yml").read_text()
        documented = re.findall(r"run --rm (?:-e \w+ )?cli ([a-z-]+(?: [a-z-]+)?)", text)
        assert {"connect", "sync-now"} <= {d.split()[0] for d in documented}
        for command in documented:
            assert_real_command(command.split())


# --- Kubernetes ---------------------------------------------------------------------------------------

def manifests() -> list[dict[str, Any]]:
    """`kubectl kustomize deploy/kubernetes` when kubectl is installed, else the files listed as resources."""
    kdir = DEPLOY / "kubernetes"
    if shutil.which("kubectl"):
        out = subprocess.run(["kubectl", "kustomize", str(kdir)], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        return [d for d in yaml.safe_load_all(out.stdout) if d]
    k = yaml.safe_load((kdir / "kustomization.yaml").read_text())
    docs = [d for r in k["resources"] for d in yaml.safe_load_all((kdir / r).read_text()) if d]
    for gen in k.get("configMapGenerator", []):
        data = {f: (kdir / f).read_text() for f in gen["files"]}
        docs.append({"kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data})
    return docs


def of_kind(kind: str) -> list[dict[str, Any]]:
    return [d for d in manifests() if d["kind"] == kind]


class TestKubernetes:
    def test_deployment_replicas_probes_port_and_resources(self) -> None:
        """replicas > 1, liveness/readiness on /healthz and /readyz via the named `metrics` port, limits set."""
        (dep,) = of_kind("Deployment")
        assert dep["spec"]["replicas"] > 1
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports == {"metrics": 8080}
        env = {e["name"]: e for e in container["env"]}
        assert env["COST_WORKER_HTTP_PORT"]["value"] == "8080"
        assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "metrics"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}
        for kind in ("requests", "limits"):
            assert {"cpu", "memory"} <= set(container["resources"][kind])
        assert dep["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is True
        assert_real_command(container["args"])

    def test_environment_names_are_settings_and_the_key_is_a_mounted_secret(self) -> None:
        """Env names are settings; MASTER_KEY_FILE lies in the mounted Secret volume; the URL comes from it."""
        (dep,) = of_kind("Deployment")
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert_real_settings(set(env))
        key_file = Path(env["COST_WORKER_MASTER_KEY_FILE"]["value"])
        secret_volumes = {v["name"]: v["secret"] for v in pod["volumes"] if "secret" in v}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        (name, secret), = secret_volumes.items()
        assert str(key_file.parent) == mounts[name]
        assert key_file.name in [item["path"] for item in secret["items"]]
        assert env["COST_WORKER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["name"] == secret["secretName"]

    def test_ui_token_is_a_file_of_the_mounted_secret(self) -> None:
        """COST_WORKER_UI_TOKEN_FILE names a file of the mounted Secret volume (its own item, not the master
        key); no COST_WORKER_UI_TOKEN in the env, by value or otherwise; no token in the ConfigMap."""
        (dep,) = of_kind("Deployment")
        pod = dep["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        env = {e["name"]: e for e in container["env"]}
        assert "COST_WORKER_UI_TOKEN" not in env
        token_file = Path(env["COST_WORKER_UI_TOKEN_FILE"]["value"])
        key_file = Path(env["COST_WORKER_MASTER_KEY_FILE"]["value"])
        assert token_file != key_file
        mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
        volume = next(v for v in pod["volumes"] if v["name"] == mounts[str(token_file.parent)])
        items = {item["path"]: item["key"] for item in volume["secret"]["items"]}
        assert token_file.name in items and not volume["secret"].get("optional")
        assert f"--from-file={items[token_file.name]}=" in (DEPLOY / "kubernetes" / "kustomization.yaml").read_text()
        (cm,) = of_kind("ConfigMap")
        assert "ui_token" not in tomllib.loads(cm["data"]["config.toml"])

    def test_configmap_is_the_example_config_and_is_mounted(self) -> None:
        """The ConfigMap holds config.example.toml unchanged; COST_WORKER_CONFIG points at its mount; it loads."""
        (cm,) = of_kind("ConfigMap")
        assert cm["data"]["config.toml"] == (ROOT / "config.example.toml").read_text()
        (dep,) = of_kind("Deployment")
        (container,) = dep["spec"]["template"]["spec"]["containers"]
        env = {e["name"]: e.get("value") for e in container["env"]}
        mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
        config_volume = next(v["name"] for v in dep["spec"]["template"]["spec"]["volumes"] if "configMap" in v)
        assert env["COST_WORKER_CONFIG"] == f"{mounts[config_volume]}/config.toml"
        assert load_settings(DEPLOY / "kubernetes" / "config.toml") == Settings()

    def test_service_exposes_the_metrics_port_for_a_servicemonitor(self) -> None:
        """A Service with a port named `metrics` selecting the worker pods."""
        (svc,) = of_kind("Service")
        assert [p["name"] for p in svc["spec"]["ports"]] == ["metrics"]
        (dep,) = of_kind("Deployment")
        labels = dep["spec"]["template"]["metadata"]["labels"]
        assert all(labels.get(k) == v for k, v in svc["spec"]["selector"].items())


# --- Grafana ------------------------------------------------------------------------------------------

SQL_WORDS = {
    "select", "from", "where", "and", "or", "not", "in", "is", "null", "as", "group", "by", "order", "left",
    "join", "on", "case", "when", "then", "else", "end", "sum", "count", "min", "max", "coalesce", "nullif",
    "timestamp", "float", "extract", "epoch", "now", "date_trunc", "day", "asc", "desc", "limit", "__text",
    "__value", "between", "distinct", "abs",
}


def dashboard_queries() -> list[str]:
    dash = json.loads((DEPLOY / "grafana" / "cost-worker.json").read_text())
    queries = [t["rawSql"] for p in dash["panels"] for t in p.get("targets", [])]
    queries += [v["query"] for v in dash["templating"]["list"] if v["type"] == "query"]
    return queries


def substitute(sql: str) -> str:
    """Grafana's macros and variables as plain SQL."""
    sql = re.sub(r"\$__timeFilter\(([^()]*(?:\([^()]*\))?[^()]*)\)",
                 r"\1 BETWEEN '2000-01-01' AND '2100-01-01'", sql)
    return sql.replace("$integration", "1")


class TestGrafana:
    def test_queries_reference_real_tables_and_columns(self) -> None:
        """Every table and column name in the dashboard's SQL exists in worker.storage.tables."""
        tables = metadata.tables
        queries = dashboard_queries()
        assert len(queries) >= 8
        for sql in queries:
            plain = re.sub(r"'[^']*'|\"[^\"]*\"", "", substitute(sql))
            used = set(re.findall(r"(?:FROM|JOIN)\s+([a-z_]+)", plain, re.I))
            assert used and used <= set(tables), (used, sql)
            aliases = set(re.findall(r"(?:FROM|JOIN)\s+[a-z_]+\s+([a-z])\b", plain, re.I))
            aliases |= {a.lower() for a in re.findall(r"\bAS\s+([a-z_]+)", plain, re.I)}
            columns = {c.name for t in used for c in tables[t].columns}
            for _qualifier, column in re.findall(r"\b([a-z])\.([a-z_]+)", plain):
                assert column in {c.name for t in tables.values() for c in t.columns}, (column, sql)
            words = set(re.findall(r"(?<![.\w])([a-z_][a-z0-9_]*)\b(?!\.)", plain, re.I))
            unknown = {w for w in words if w.lower() not in SQL_WORDS | aliases | columns | set(tables)}
            assert not unknown, (unknown, sql)

    def test_panels_cover_cost_tokens_cache_and_sync_health(self) -> None:
        """Daily cost by model, tokens by type, cache share and sync health are all there."""
        joined = "\n".join(dashboard_queries())
        assert "SUM(amount_usd)" in joined and "model" in joined
        assert "cache_read_input_tokens" in joined and "cache_share" in joined
        assert "FROM integrations" in joined and "sync_runs" in joined
        assert "FROM reconcile_runs" in joined and "delta_usd" in joined  # latest drift per integration

    def test_panels_cover_budgets_and_anomalies(self) -> None:
        """Budget spend and forecast against the limit, and spend anomalies (per day and listed)."""
        dash = json.loads((DEPLOY / "grafana" / "cost-worker.json").read_text())
        titles = " | ".join(p["title"] for p in dash["panels"])
        assert "Budgets" in titles and "Spend anomalies" in titles
        joined = "\n".join(dashboard_queries())
        assert "FROM budget_states" in joined and "forecast_usd" in joined and "limit_usd" in joined
        assert "FROM spend_anomalies" in joined and "baseline_usd" in joined and "direction" in joined

    @pytest.mark.skipif(not PG_URL, reason="needs COST_WORKER_TEST_DATABASE_URL (PostgreSQL)")
    def test_queries_run_on_the_migrated_postgresql_schema(self) -> None:
        """Each query (macros substituted) executes on a freshly migrated PostgreSQL schema."""
        assert PG_URL
        with private_pg_schema(PG_URL) as url:
            engine = make_engine(url)
            try:
                upgrade(engine)
                for sql in dashboard_queries():
                    with engine.begin() as conn:
                        conn.execute(text(substitute(sql).replace(":", r"\:")))
            finally:
                engine.dispose()
