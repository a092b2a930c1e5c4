"""The Kubernetes manifests: valid against the schemas offline, the settings they set are the rack's, and the
NetworkPolicies keep build containers away from Postgres, Redis and the API."""

from __future__ import annotations

import copy
import ipaddress
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
from ruamel.yaml import YAML

from rack.config import variables

K8S = Path(__file__).resolve().parents[1] / "deploy" / "k8s"
OVERLAYS = sorted(p.parent for p in (K8S / "overlays").glob("*/kustomization.yaml"))
# The oldest Kubernetes the manifests are for (internalTrafficPolicy is GA since 1.26) and the newest known.
VERSIONS = ("1.28", kubernetes_validate.utils.latest_version())
POD_IP = ipaddress.ip_address("10.244.0.10")  # pods get private addresses in every cluster we target
RACK_IMAGES = ("rack-api", "rack-worker")
_yaml = YAML(typ="safe")

# KEDA's kinds are not in Kubernetes' schemas: the fields these manifests rely on, from keda.sh's CRDs.
KEDA_SCHEMAS = {
    "ScaledObject": {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "required": ["scaleTargetRef", "triggers"],
                "properties": {
                    "scaleTargetRef": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["name"],
                        "properties": {n: {"type": "string"} for n in ("apiVersion", "kind", "name")},
                    },
                    "minReplicaCount": {"type": "integer", "minimum": 0},
                    "maxReplicaCount": {"type": "integer", "minimum": 1},
                    "pollingInterval": {"type": "integer", "minimum": 1},
                    "cooldownPeriod": {"type": "integer", "minimum": 0},
                    "triggers": {
                        "type": "array",
                        "minItems": 1,
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["type", "metadata"],
                            "properties": {
                                "type": {"type": "string"},
                                "metadata": {"type": "object", "additionalProperties": {"type": "string"}},
                                "authenticationRef": {
                                    "type": "object",
                                    "required": ["name"],
                                    "properties": {"name": {"type": "string"}},
                                },
                            },
                        },
                    },
                },
            }
        },
    },
    "TriggerAuthentication": {
        "type": "object",
        "required": ["spec"],
        "properties": {
            "spec": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "secretTargetRef": {
                        "type": "array",
                        "items": {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["parameter", "name", "key"],
                            "properties": {n: {"type": "string"} for n in ("parameter", "name", "key")},
                        },
                    }
                },
            }
        },
    },
}


def render(folder: Path) -> list[dict]:
    """Do what `kustomize build` does with the features these kustomizations use; refuse any other."""
    kustomization = _yaml.load((folder / "kustomization.yaml").read_text())
    known = {"apiVersion", "kind", "labels", "resources", "namespace", "images", "replicas", "patches"}
    assert set(kustomization) <= known, f"{folder}: render() does not know {set(kustomization) - known}"
    docs: list[dict] = []
    for resource in kustomization.get("resources", []):
        path = folder / resource
        docs += render(path) if path.is_dir() else [d for d in _yaml.load_all(path.read_text()) if d]
    for entry in kustomization.get("labels", []):
        for doc in docs:
            doc["metadata"].setdefault("labels", {}).update(entry["pairs"])
    if "namespace" in kustomization:
        for doc in docs:
            if doc["kind"] != "Namespace":
                doc["metadata"]["namespace"] = kustomization["namespace"]
    for image in kustomization.get("images", []):
        for container in (c for doc in docs for c in containers(doc)):
            name, _, tag = container["image"].partition(":")
            if name == image["name"]:
                container["image"] = f"{image.get('newName', name)}:{image.get('newTag', tag)}"
    for entry in kustomization.get("replicas", []):
        matched = [d for d in docs if d["metadata"]["name"] == entry["name"] and "replicas" in d["spec"]]
        assert matched, f"{folder}: replicas for unknown {entry['name']}"
        for doc in matched:
            doc["spec"]["replicas"] = entry["count"]
    for patch in kustomization.get("patches", []):
        target = patch["target"]
        matched = [d for d in docs if d["kind"] == target["kind"] and d["metadata"]["name"] == target["name"]]
        assert matched, f"{folder}: patch for unknown {target}"
        for doc in matched:
            for op in _yaml.load(patch["patch"]):
                _apply(doc, op)
    return docs


def _apply(doc: dict, op: dict) -> None:
    """Apply one JSON-patch operation (replace or add) to `doc`."""
    *parents, last = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
    node = doc
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    assert op["op"] in ("replace", "add"), op
    if op["op"] == "replace":
        assert (int(last) < len(node)) if isinstance(node, list) else (last in node), f"no {op['path']}"
    if isinstance(node, list):
        node[int(last)] = op["value"]
    else:
        node[last] = op["value"]


def pod_spec(doc: dict) -> dict | None:
    spec = doc.get("spec", {})
    if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return spec["template"]["spec"]
    return None


def containers(doc: dict) -> list[dict]:
    spec = pod_spec(doc)
    return [*spec.get("initContainers", []), *spec["containers"]] if spec else []


def one(docs: list[dict], kind: str, name: str) -> dict:
    [doc] = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return doc


@pytest.fixture(scope="module", params=[K8S / "base", *OVERLAYS], ids=lambda p: p.name)
def docs(request) -> list[dict]:
    return render(request.param)


def test_there_is_an_overlay():
    assert [p.name for p in OVERLAYS] == ["production"]


def test_every_manifest_is_valid_against_the_kubernetes_schemas(docs):
    kinds = set()
    for doc in docs:
        kinds.add(doc["kind"])
        if doc["kind"] in KEDA_SCHEMAS:
            assert doc["apiVersion"] == "keda.sh/v1alpha1"
            jsonschema.validate(doc, KEDA_SCHEMAS[doc["kind"]])
            continue
        for version in VERSIONS:
            kubernetes_validate.validate(copy.deepcopy(doc), version, strict=True)
    wanted = {"Deployment", "Service", "Ingress", "Job", "Secret", "ConfigMap", "NetworkPolicy"}
    wanted |= {"PodDisruptionBudget", "ScaledObject", "DaemonSet", "StatefulSet"}
    assert wanted <= kinds


def test_the_strict_validation_catches_a_misspelt_field(docs):
    """The check above is not vacuous: a typo in a pod spec fails it."""
    broken = copy.deepcopy(one(docs, "Deployment", "rack-api"))
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, VERSIONS[0], strict=True)


def test_the_settings_they_set_are_exactly_what_the_rack_reads(docs):
    wanted = variables()
    settings = one(docs, "ConfigMap", "rack-settings")["data"]
    credentials = one(docs, "Secret", "rack-credentials")["stringData"]
    assert not set(settings) & set(credentials)
    assert set(settings) | set(credentials) == set(wanted)
    assert {name for name, secret in wanted.items() if secret} <= set(credentials)
    rack_containers = 0
    for doc in docs:
        for container in containers(doc):
            explicit = {e["name"] for e in container.get("env", [])}
            assert {n for n in explicit if n.startswith("RACK_")} <= set(wanted), container["name"]
            refs = [
                (s.get("configMapRef") or s.get("secretRef"))["name"] for s in container.get("envFrom", [])
            ]
            if container["image"].split("/")[-1].split(":")[0] in RACK_IMAGES:
                rack_containers += 1
                assert {"rack-settings", "rack-credentials"} <= set(refs), container["name"]
            else:  # nothing else gets the rack's credentials
                assert not {"rack-settings", "rack-credentials"} & set(refs), container["name"]
    assert rack_containers == 3  # migrate, api, worker


def test_the_api_is_probed_on_check_and_reached_through_its_service_and_ingress(docs):
    api = one(docs, "Deployment", "rack-api")
    [container] = containers(api)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/check"
        assert container[probe]["httpGet"]["port"] in ports
    service = one(docs, "Service", "rack-api")
    assert service["spec"]["selector"].items() <= api["spec"]["template"]["metadata"]["labels"].items()
    assert service["spec"]["ports"][0]["targetPort"] in ports
    backend = one(docs, "Ingress", "rack-api")["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "rack-api", "port": {"name": service["spec"]["ports"][0]["name"]}}
    pdb = one(docs, "PodDisruptionBudget", "rack-api")
    assert (
        pdb["spec"]["selector"]["matchLabels"].items()
        <= api["spec"]["template"]["metadata"]["labels"].items()
    )


def test_workers_scale_on_the_celery_queue(docs):
    scaled = one(docs, "ScaledObject", "rack-worker")
    assert scaled["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "rack-worker",
    }
    one(docs, "Deployment", "rack-worker")
    [trigger] = scaled["spec"]["triggers"]
    broker = urlsplit(one(docs, "Secret", "rack-credentials")["stringData"]["RACK_BROKER_URL"])
    assert trigger["type"] == "redis"
    assert trigger["metadata"]["listName"] == "celery"  # Celery's default queue, a Redis list
    assert trigger["metadata"]["databaseIndex"] == broker.path.strip("/")
    assert trigger["metadata"]["address"] == f"{broker.hostname}:{broker.port}"
    auth = one(docs, "TriggerAuthentication", trigger["authenticationRef"]["name"])
    [ref] = auth["spec"]["secretTargetRef"]
    assert ref["key"] in one(docs, "Secret", ref["name"])["stringData"]


def _labels(docs: list[dict], component: str) -> dict:
    [doc] = [d for d in docs if pod_spec(d) and d["spec"]["template"]["metadata"]["labels"].get(
        "app.kubernetes.io/component") == component]  # fmt: skip
    return doc["spec"]["template"]["metadata"]["labels"]


def _selects(selector: dict, labels: dict) -> bool:
    assert set(selector) <= {"matchLabels"}, selector  # the evaluator knows matchLabels only
    return selector.get("matchLabels", {}).items() <= labels.items()


def _peer_matches(peer: dict, labels: dict) -> bool:
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        inside = POD_IP in ipaddress.ip_network(block["cidr"])
        return inside and not any(POD_IP in ipaddress.ip_network(e) for e in block.get("except", []))
    if "namespaceSelector" in peer:
        return False  # another namespace: never one of the rack's own pods
    return _selects(peer["podSelector"], labels)


def _rules_allow(rules: list[dict], key: str, labels: dict, port: int) -> bool:
    for rule in rules:
        ports = [p["port"] for p in rule.get("ports", [])]
        if ports and port not in ports:
            continue
        if key not in rule or any(_peer_matches(peer, labels) for peer in rule[key]):
            return True
    return False


def reachable(docs: list[dict], source: dict, target: dict, port: int) -> bool:
    """Tell whether the NetworkPolicies let a pod labelled `source` open `port` on one labelled `target`."""
    policies = [d["spec"] for d in docs if d["kind"] == "NetworkPolicy"]
    egress = [p for p in policies if "Egress" in p["policyTypes"] and _selects(p["podSelector"], source)]
    ingress = [p for p in policies if "Ingress" in p["policyTypes"] and _selects(p["podSelector"], target)]
    out = not egress or any(_rules_allow(p.get("egress", []), "to", target, port) for p in egress)
    into = not ingress or any(_rules_allow(p.get("ingress", []), "from", source, port) for p in ingress)
    return out and into


def test_network_policies_keep_build_containers_away_from_postgres_redis_and_the_api(docs):
    pods = {c: _labels(docs, c) for c in ("api", "worker", "builder", "registry", "postgres", "redis")}
    pods["migrate"] = _labels(docs, "migrate")
    ports = {"postgres": 5432, "redis": 6379, "api": 8000, "registry": 5000, "builder": 2375}
    allowed = {
        (source, target)
        for source in pods
        for target, port in ports.items()
        if source != target and reachable(docs, pods[source], pods[target], port)
    }
    # Build steps run on the builder pods' network: they reach the registry, and nothing else inside.
    assert {t for s, t in allowed if s == "builder"} == {"registry"}
    assert ("api", "postgres") in allowed and ("api", "redis") in allowed
    assert {t for s, t in allowed if s == "worker"} == {"postgres", "redis", "builder", "registry"}
    assert {s for s, t in allowed if t == "postgres"} == {"api", "worker", "migrate"}
    assert {s for s, t in allowed if t == "redis"} == {"api", "worker"}
    assert {s for s, t in allowed if t == "builder"} == {"worker"}
    assert not {s for s, t in allowed if t == "api"}  # only the ingress controller, from its namespace


def test_the_overlay_names_released_images_and_one_namespace():
    for overlay in OVERLAYS:
        docs = render(overlay)
        assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {"rack"}
        images = {c["image"] for d in docs for c in containers(d)}
        assert "rack-api:dev" not in images and "rack-worker:dev" not in images
        assert one(docs, "Deployment", "rack-api")["spec"]["replicas"] == 3
