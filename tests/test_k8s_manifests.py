"""Static checks of the Kubernetes manifests in deploy/k8s/ (no cluster here: nothing is applied).

Every resource is validated offline, in strict mode (unknown fields are errors), against the
JSON schemas of two pinned Kubernetes versions that the `kubernetes-validate` package ships
(the oldest minor version these manifests support and the newest the package knows). Then
what the schema cannot see: selectors that match the pods, named ports that exist and agree
with the settings, probes on /readyz and /healthz, a termination grace period that covers the
drain, every CSMS_* variable a known setting whose value loads, secrets and config maps that
exist, an outbox volume that holds the outbox, the image pinned to the project's version.
"""

import re
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml

from schemas.settings import SETTINGS_FIELDS, Settings, env_name, load_settings

REPO = Path(__file__).resolve().parents[1]
K8S = REPO / "deploy" / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
SECRET_EXAMPLE = K8S / "secret.example.yaml"
# Pinned schema versions: the oldest Kubernetes minor version the manifests are written for
# (every field used is GA there) and the newest one the installed kubernetes-validate ships.
K8S_VERSIONS = ("1.30.0", "1.37.0")
KNOWN_ENV = frozenset(env_name(field.name) for field in SETTINGS_FIELDS)
# Chargers one gateway pod is sized for (requests in gateway.yaml): a Python process held
# ~20,000 websockets on this machine type (shared/reference/scale-out.md). The drain of that
# many at CSMS_DRAIN_RATE_PER_S must fit in its half of CSMS_SHUTDOWN_TIMEOUT_S.
CHARGERS_PER_GATEWAY_POD = 20_000
# The smallest idle timeout of the common cloud TCP load balancers (Azure: 4 minutes).
LB_IDLE_TIMEOUT_S = 240.0
WORKLOADS = {"gateway": "csms-gateway", "ingest": "csms-ingest"}


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)


def _documents(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]
    assert docs, f"{path.name} holds no resource"
    return docs


def _resources() -> list[dict[str, Any]]:
    return [doc for path in _manifest_files() for doc in _documents(path)]


def _applied() -> list[dict[str, Any]]:
    """What `kubectl apply -k deploy/k8s` creates (the example Secret is not part of it)."""
    return [doc for name in _kustomization()["resources"] for doc in _documents(K8S / name)]


def _kustomization() -> dict[str, Any]:
    data = yaml.safe_load(KUSTOMIZATION.read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def _find(kind: str, name: str) -> dict[str, Any]:
    found = [doc for doc in _resources() if doc["kind"] == kind and doc["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name}, found {len(found)}"
    return found[0]


def _pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def _container(component: str) -> dict[str, Any]:
    (container,) = _pod_spec(_find("StatefulSet", WORKLOADS[component]))["containers"]
    assert isinstance(container, dict)
    return container


def _config_env(container: dict[str, Any]) -> dict[str, str]:
    """The container's environment from its ConfigMaps, then its literal `env` values."""
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        env.update(_find("ConfigMap", source["configMapRef"]["name"])["data"])
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = str(var["value"])
    return env


def _secret_values() -> dict[str, str]:
    (secret,) = _documents(SECRET_EXAMPLE)
    return dict(secret["stringData"])


def _image_env() -> dict[str, str]:
    """The CSMS_* variables the image sets (Dockerfile ENV KEY=VALUE lines)."""
    return dict(re.findall(r"\b(CSMS_[A-Z0-9_]+)=(\S+)", (REPO / "Dockerfile").read_text(encoding="utf-8")))


def _full_env(component: str) -> dict[str, str]:
    """What the process sees: the image's ENV, the ConfigMaps and `env`, with the example Secret's
    values and the pod name filled in."""
    container = _container(component)
    env = {**_image_env(), **_config_env(container)}
    secrets = _secret_values()
    for var in container.get("env", []):
        source = var.get("valueFrom", {})
        if "secretKeyRef" in source:
            env[var["name"]] = secrets[source["secretKeyRef"]["key"]].replace("CHANGE-ME", "0" * 40)
        elif source.get("fieldRef", {}).get("fieldPath") == "metadata.name":
            env[var["name"]] = f"{WORKLOADS[component]}-0"
    return env


def _settings(component: str) -> Settings:
    return load_settings(environ=_full_env(component))


def _quantity_bytes(text: str) -> int:
    match = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti)?", text)
    assert match, f"not a byte quantity: {text!r}"
    return int(match.group(1)) * {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}[match.group(2)]


def _named_ports(container: dict[str, Any]) -> dict[str, int]:
    return {str(p["name"]): int(p["containerPort"]) for p in container["ports"]}


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _probes(container: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any]]]:
    for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
        if kind in container:
            yield kind, container[kind]


# --------------------------------------------------------------------------- schema


def test_the_validator_is_offline_and_strict() -> None:
    """The pinned schemas ship inside the package; a typo and a wrong type are both caught."""
    workload = _find("StatefulSet", "csms-gateway")
    typo = yaml.safe_load(yaml.safe_dump(workload))
    typo["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["pth"] = "/readyz"
    wrong_type = yaml.safe_load(yaml.safe_dump(workload))
    wrong_type["spec"]["replicas"] = "two"
    for version in K8S_VERSIONS:
        for broken in (typo, wrong_type):
            with pytest.raises(kubernetes_validate.ValidationError):
                kubernetes_validate.validate(broken, version, strict=True)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("path", _manifest_files(), ids=lambda p: p.name)
def test_manifests_validate_against_the_pinned_schema(path: Path, version: str) -> None:
    for doc in _documents(path):
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = ".".join(str(part) for part in exc.path)
            pytest.fail(f"{path.name}: {doc['kind']} {doc['metadata']['name']} at {where}: {exc.message}")


def test_kustomization_lists_every_manifest_but_the_example_secret() -> None:
    listed = _kustomization()["resources"]
    assert len(listed) == len(set(listed))
    expected = {p.name for p in _manifest_files()} - {SECRET_EXAMPLE.name}
    assert set(listed) == expected
    assert not any(doc["kind"] == "Secret" for doc in _applied()), "real secrets never live in the repository"


# --------------------------------------------------------------------------- wiring


@pytest.mark.parametrize("component", sorted(WORKLOADS))
def test_workload_selectors_services_and_budgets_match_the_pods(component: str) -> None:
    workload = _find("StatefulSet", WORKLOADS[component])
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert _selects(workload["spec"]["selector"]["matchLabels"], labels)
    headless = _find("Service", workload["spec"]["serviceName"])
    assert headless["spec"]["clusterIP"] == "None", "a StatefulSet's serviceName must be a headless Service"
    ports = _named_ports(_container(component))
    services = [doc for doc in _resources() if doc["kind"] == "Service" and _selects(doc["spec"]["selector"], labels)]
    assert headless in services
    for service in services:
        for port in service["spec"]["ports"]:
            assert port["targetPort"] in ports, f"Service {service['metadata']['name']}: no container port {port}"
    budgets = [doc for doc in _resources() if doc["kind"] == "PodDisruptionBudget"
               and _selects(doc["spec"]["selector"]["matchLabels"], labels)]
    assert len(budgets) == 1, f"{component}: one PodDisruptionBudget must cover its pods"
    assert budgets[0]["spec"]["maxUnavailable"] == 1
    selector = workload["spec"]["selector"]["matchLabels"]
    for other in _resources():
        if other["kind"] == "StatefulSet" and other["metadata"]["name"] != workload["metadata"]["name"]:
            assert not _selects(selector, other["spec"]["template"]["metadata"]["labels"]), "selectors overlap"


@pytest.mark.parametrize("component", sorted(WORKLOADS))
def test_ports_agree_with_the_settings(component: str) -> None:
    container = _container(component)
    ports = _named_ports(container)
    settings = _settings(component)
    assert ports["http"] == settings.http_port
    if component == "gateway":
        assert ports["ocpp"] == settings.ocpp_port
    for kind, probe in _probes(container):
        assert probe["httpGet"]["port"] in ports, f"{component} {kind}: unknown port"
    annotations = _find("StatefulSet", WORKLOADS[component])["spec"]["template"]["metadata"]["annotations"]
    # One process per pod: its /metrics is on the API port (with --workers N it would not be).
    assert settings.workers == 1
    assert int(annotations["prometheus.io/port"]) == settings.http_port


def test_chargers_reach_the_gateways_through_a_tcp_load_balancer() -> None:
    service = _find("Service", "csms-ocpp")
    assert service["spec"]["type"] == "LoadBalancer"
    # The per-source handshake and failed-login budgets need the charger's own address.
    assert service["spec"]["externalTrafficPolicy"] == "Local"
    assert service["spec"]["sessionAffinity"] == "None"
    (port,) = service["spec"]["ports"]
    assert port["protocol"] == "TCP"
    assert port["targetPort"] == "ocpp"
    settings = _settings("gateway")
    assert 0 < settings.ping_interval_s < LB_IDLE_TIMEOUT_S, "idle websockets would be cut by the load balancer"


@pytest.mark.parametrize("component", sorted(WORKLOADS))
def test_readiness_reflects_broker_and_database_and_liveness_the_process(component: str) -> None:
    probes = dict(_probes(_container(component)))
    assert probes["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert probes["livenessProbe"]["httpGet"]["path"] == "/healthz"
    # Migrations run before anything listens: liveness must not count during start-up.
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300
    liveness = probes["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60, "a short stall must not restart the pod"


@pytest.mark.parametrize("component", sorted(WORKLOADS))
def test_node_id_is_the_stable_pod_name(component: str) -> None:
    env = {var["name"]: var for var in _container(component)["env"]}
    assert env["CSMS_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    assert _settings(component).node_id == f"{WORKLOADS[component]}-0"


def test_termination_grace_covers_the_drain() -> None:
    workload = _find("StatefulSet", "csms-gateway")
    container = _container("gateway")
    settings = _settings("gateway")
    assert settings.drain_rate_per_s > 0, "SIGTERM would close every charger at once"
    drain_s = CHARGERS_PER_GATEWAY_POD / settings.drain_rate_per_s
    assert drain_s <= settings.shutdown_timeout_s / 2, (
        f"{CHARGERS_PER_GATEWAY_POD} chargers at {settings.drain_rate_per_s}/s take {drain_s:.0f} s, more than "
        f"half of CSMS_SHUTDOWN_TIMEOUT_S ({settings.shutdown_timeout_s} s)")
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop_s = float(command[1])
    grace_s = _pod_spec(workload)["terminationGracePeriodSeconds"]
    assert grace_s > pre_stop_s + settings.shutdown_timeout_s, "the kubelet would SIGKILL during the drain"
    ingest_grace = _pod_spec(_find("StatefulSet", "csms-ingest"))["terminationGracePeriodSeconds"]
    assert ingest_grace > _settings("ingest").shutdown_timeout_s


def test_outbox_volume_holds_the_outbox() -> None:
    workload = _find("StatefulSet", "csms-gateway")
    settings = _settings("gateway")
    mounts = {m["name"]: m["mountPath"] for m in _container("gateway")["volumeMounts"]}
    (claim,) = workload["spec"]["volumeClaimTemplates"]
    assert mounts[claim["metadata"]["name"]] == str(settings.data_dir), "the outbox is not on the persistent volume"
    size = _quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])
    assert size >= settings.outbox_max_bytes + 64 * 2**20, "the volume could fill before the outbox refuses data"
    assert workload["spec"]["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}


@pytest.mark.parametrize("component", sorted(WORKLOADS))
def test_settings_are_known_and_load(component: str) -> None:
    """A misspelt or renamed CSMS_* variable would be ignored silently by the process."""
    env = _full_env(component)
    unknown = {key for key in env if key.startswith("CSMS_")} - KNOWN_ENV
    assert not unknown, f"{component}: {sorted(unknown)} are no settings (python -m schemas.settings lists them)"
    settings = _settings(component)
    assert settings.database_url
    assert settings.mqtt_url, "the roles talk over the broker"


def test_referenced_secrets_and_config_maps_exist() -> None:
    secrets = _secret_values()
    for component in WORKLOADS:
        container = _container(component)
        for source in container.get("envFrom", []):
            _find("ConfigMap", source["configMapRef"]["name"])
        for var in container.get("env", []):
            ref = var.get("valueFrom", {}).get("secretKeyRef")
            if ref:
                assert ref["name"] == "csms-secrets"
                assert ref["key"] in secrets, f"{component}: the Secret has no key {ref['key']}"
    gateway_env = {var["name"] for var in _container("gateway")["env"]}
    # Every gateway needs the same operator token and the same credential secret.
    assert {"CSMS_API_TOKEN", "CSMS_CREDENTIAL_SECRET"} <= gateway_env


@pytest.mark.parametrize("component", sorted(WORKLOADS))
def test_pods_are_locked_down_and_sized(component: str) -> None:
    pod = _pod_spec(_find("StatefulSet", WORKLOADS[component]))
    container = _container(component)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    security = container["securityContext"]
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"]["drop"] == ["ALL"]
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert {str(_settings(component).data_dir), "/tmp"} <= mounts, "the writable paths must be volumes"  # noqa: S108
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert "memory" in container["resources"]["limits"]
    assert "cpu" not in container["resources"]["limits"], "CPU throttling stalls the event loop"


def test_images_are_pinned_to_the_project_version() -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]["version"]
    for component in WORKLOADS:
        assert _container(component)["image"] == f"csms-telemetry:{version}"
