#!/usr/bin/env python3
"""Offline checks of worldmesh's operations files (containers, compose, Kubernetes, Prometheus,
Grafana). Run from the repository root:

    python3 deploy/validate.py [--builtin-renderer]

Checks, one output line each ("ok" or "FAIL", then the problems indented):

1. kubernetes manifests: every YAML document under deploy/kubernetes that is a Kubernetes
   object validates against the Kubernetes JSON schemas bundled by the PyPI package
   kubernetes-validate (the newest version it bundles), in strict mode (unknown fields fail).
   Every manifest file must be listed by some kustomization.
2. kustomize overlays: each overlay under deploy/kubernetes/overlays is rendered (with
   `kustomize build` or `kubectl kustomize` when one is on PATH, else with the small renderer
   below) and the output validated the same way, plus cross-references (Secret keys, ConfigMaps,
   Service/PDB selectors, HPA target, probes, drain grace period). When a kustomize binary is
   there, the builtin renderer must produce the same objects, so it stays trustworthy for
   machines without one. --builtin-renderer skips the binary.
3. compose: docker/compose.yaml has the services of the full stack, depends_on names services,
   bind-mounted host paths exist, Redis runs with --appendonly yes, zones get time to drain.
4. Dockerfile: every path COPYed from the build context exists, is not excluded by
   docker/Dockerfile.dockerignore, and every workspace member of Cargo.toml is copied.
5. Prometheus and Grafana: the dashboard JSON parses and its expressions, the alert rules and
   the prometheus-adapter rule name only known metrics; every alert is documented in
   docs/operations.md; the compose Prometheus scrapes every worldmesh service.

Needs Python 3.11 with PyYAML and kubernetes-validate. When either is missing the script
creates target/deploy-venv, installs them there with pip and re-runs itself inside it.
Exit status 0 when every check passes, 1 otherwise.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / "target" / "deploy-venv"
# Pinned so the schemas (and so the verdicts) only change when someone bumps this line.
REQUIREMENTS = ["kubernetes-validate==1.37.0", "PyYAML>=6,<7"]
REEXEC_MARK = "WORLDMESH_DEPLOY_VALIDATE_IN_VENV"

K8S_DIR = REPO / "deploy" / "kubernetes"
OVERLAYS_DIR = K8S_DIR / "overlays"
# YAML files under deploy/kubernetes that are not Kubernetes objects.
NON_MANIFESTS = {K8S_DIR / "prometheus-adapter" / "values.yaml"}
ADAPTER_VALUES = K8S_DIR / "prometheus-adapter" / "values.yaml"
COMPOSE = REPO / "docker" / "compose.yaml"
DOCKERFILE = REPO / "docker" / "Dockerfile"
DOCKERIGNORE = REPO / "docker" / "Dockerfile.dockerignore"
PROMETHEUS_CONFIG = REPO / "docker" / "prometheus" / "prometheus.yml"
ALERTS = REPO / "deploy" / "prometheus" / "alerts.yml"
DASHBOARD = REPO / "docker" / "grafana" / "dashboards" / "worldmesh.json"
GRAFANA_PROVISIONING = REPO / "docker" / "grafana" / "provisioning"
OPERATIONS_DOC = REPO / "docs" / "operations.md"

# Zones drain on SIGTERM within 25 s; Kubernetes must give them at least this long.
ZONE_MIN_GRACE_K8S_S = 45
ZONE_MIN_GRACE_COMPOSE_S = 30

COMPOSE_SERVICES = [
    "coordinator", "persistence", "zone-1", "zone-2", "zone-3", "zone-4", "gateway-1",
    "gateway-2", "redis", "postgres", "prometheus", "grafana", "jaeger",
]
COMPOSE_OPTIONAL = {"load-test": "load-test"}  # service -> profile it must be under

# The metrics the services export (Prometheus names). Histograms appear in Prometheus only as
# <name>_bucket, <name>_sum and <name>_count.
COUNTERS = """
worldmesh_coordinator_handoff_messages_total worldmesh_coordinator_lease_expiries_total
worldmesh_coordinator_malformed_total worldmesh_coordinator_sql_errors_total
worldmesh_coordinator_zone_registrations_total worldmesh_gateway_connections_total
worldmesh_gateway_datagrams_dropped_total worldmesh_gateway_datagrams_in_total
worldmesh_gateway_datagrams_out_total worldmesh_gateway_handshake_failures_total
worldmesh_gateway_inputs_dropped_total worldmesh_gateway_kicks_total
worldmesh_gateway_logins_total worldmesh_gateway_refusals_total
worldmesh_gateway_relocations_total worldmesh_gateway_retries_sent_total
worldmesh_gateway_starved_players_total worldmesh_gateway_snapshots_not_routed_total
worldmesh_persistence_backend_errors_total worldmesh_persistence_backlog_refusals_total
worldmesh_persistence_checkpoints_acked_total worldmesh_persistence_checkpoints_durable_total
worldmesh_persistence_checkpoints_rejected_total worldmesh_persistence_flush_errors_total
worldmesh_zone_coordinator_dropped_total worldmesh_zone_frames_dropped_total
worldmesh_zone_frames_sent_total worldmesh_zone_ghost_batches_dropped_total
worldmesh_zone_handoffs_total worldmesh_zone_inputs_rejected_total worldmesh_zone_restores_total
worldmesh_zone_save_errors_total worldmesh_zone_saves_rejected_total worldmesh_zone_saves_total
worldmesh_zone_snapshot_bytes_total worldmesh_zone_tick_overruns_total
worldmesh_zone_snapshot_capped_total worldmesh_coordinator_cell_moves_total
""".split()
GAUGES = """
worldmesh_coordinator_zone_entities worldmesh_coordinator_zone_players
worldmesh_coordinator_zone_tick_p99_ms worldmesh_coordinator_zones worldmesh_gateway_connections
worldmesh_persistence_backlog_batches worldmesh_persistence_backlog_oldest_seconds
worldmesh_zone_links worldmesh_zone_save_backlog
worldmesh_zone_players worldmesh_zone_entities
worldmesh_zone_time_dilation worldmesh_coordinator_zone_time_dilation
worldmesh_coordinator_load_imbalance
""".split()
HISTOGRAMS = """
worldmesh_coordinator_authority_write_seconds worldmesh_persistence_flush_lag_seconds
worldmesh_zone_handoff_latency_seconds worldmesh_zone_tick_duration_seconds
""".split()
# Series Prometheus makes itself.
BUILTIN_SERIES = {"up"}
KNOWN_SERIES = (
    set(COUNTERS) | set(GAUGES) | BUILTIN_SERIES
    | {h + s for h in HISTOGRAMS for s in ("_bucket", "_sum", "_count")}
)


# ---------------------------------------------------------------------------------------------
# Dependencies: re-run inside target/deploy-venv when PyYAML or kubernetes-validate is missing.

def ensure_dependencies() -> None:
    try:
        import kubernetes_validate  # noqa: F401
        import yaml  # noqa: F401
        return
    except ImportError:
        pass
    if os.environ.get(REEXEC_MARK):
        sys.exit("deploy/validate.py: PyYAML or kubernetes-validate is still missing in "
                 f"{VENV.relative_to(REPO)}; delete it and retry")
    python = VENV / "bin" / "python"
    VENV.parent.mkdir(parents=True, exist_ok=True)
    # Two runs at once (e.g. parallel tests) must not build the venv over each other.
    with open(VENV.parent / "deploy-venv.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not python.exists():
            print(f"setting up {VENV.relative_to(REPO)} (python3 -m venv)", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        probe = subprocess.run([str(python), "-c", "import yaml, kubernetes_validate"],
                               capture_output=True)
        if probe.returncode != 0:
            print(f"installing {' '.join(REQUIREMENTS)} into {VENV.relative_to(REPO)}",
                  file=sys.stderr)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet",
                            "--disable-pip-version-check", *REQUIREMENTS],
                           check=True, stdout=sys.stderr)
    env = dict(os.environ, **{REEXEC_MARK: "1"})
    os.execve(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]], env)


# ---------------------------------------------------------------------------------------------
# Small helpers.

class CheckError(Exception):
    """A problem that stops one check (reported as its FAIL line)."""


def rel(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def load_yaml_docs(path: Path) -> list:
    import yaml
    try:
        with open(path) as f:
            return [d for d in yaml.safe_load_all(f) if d is not None]
    except yaml.YAMLError as e:
        raise CheckError(f"{rel(path)}: YAML does not parse: {e}") from None


def load_yaml(path: Path):
    docs = load_yaml_docs(path)
    if len(docs) != 1:
        raise CheckError(f"{rel(path)}: expected one YAML document, found {len(docs)}")
    return docs[0]


def obj_id(obj: dict) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{obj.get('kind')}/{(ns + '/') if ns else ''}{meta.get('name')}"


def duration_s(value) -> float:
    """Compose-style durations: 45s, 1m30s, 500ms; a bare number is seconds."""
    if isinstance(value, (int, float)):
        return float(value)
    total, matched = 0.0, False
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|us|h|m|s)", str(value)):
        total += float(num) * {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6}[unit]
        matched = True
    if not matched:
        raise CheckError(f"cannot read duration {value!r}")
    return total


# ---------------------------------------------------------------------------------------------
# PromQL: the metric names an expression reads.

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and",
                "or", "unless", "offset", "inf", "nan"}


def promql_metrics(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, aggregations,
    keywords, label names (inside {...} or by/without/on/ignoring (...)), strings or ranges."""
    s = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', expr)
    s = re.sub(r"\{[^}]*\}", " ", s)
    s = re.sub(r"\[[^\]]*\]", " ", s)
    s = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", s)
    names = set()
    for m in re.finditer(r"(?<![A-Za-z0-9_:.$])[A-Za-z_:][A-Za-z0-9_:]*", s):
        if s[m.end():].lstrip().startswith("("):
            continue  # a function or an aggregation
        if m.group(0).lower() in PROMQL_WORDS:
            continue
        names.add(m.group(0))
    return names


def unknown_metrics(expr: str) -> set[str]:
    return promql_metrics(expr) - KNOWN_SERIES


# ---------------------------------------------------------------------------------------------
# Kubernetes schemas.

def k8s_version() -> str:
    import kubernetes_validate
    return kubernetes_validate.latest_version()


def k8s_validate(obj, where: str, version: str) -> list[str]:
    import kubernetes_validate
    if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
        return [f"{where}: not a Kubernetes object (no apiVersion/kind)"]
    try:
        kubernetes_validate.validate(obj, version, strict=True)
    except kubernetes_validate.ValidationError as e:
        path = ".".join(str(p) for p in e.path) or "(root)"
        return [f"{where}: {obj_id(obj)}: {path}: {e.message}"]
    except kubernetes_validate.SchemaNotFoundError as e:
        return [f"{where}: {obj_id(obj)}: {e.message}"]
    return []


KUSTOMIZATION_NAMES = ("kustomization.yaml", "kustomization.yml", "Kustomization")


def kustomization_file(directory: Path) -> Path | None:
    for name in KUSTOMIZATION_NAMES:
        if (directory / name).is_file():
            return directory / name
    return None


def check_kubernetes_manifests(version: str) -> str:
    problems: list[str] = []
    listed: set[Path] = set()
    patches: set[Path] = set()
    files = sorted(p for p in K8S_DIR.rglob("*") if p.suffix in (".yaml", ".yml"))
    for kfile in (f for f in files if f.name in KUSTOMIZATION_NAMES):
        k = load_yaml(kfile) or {}
        for r in k.get("resources") or []:
            target = (kfile.parent / r).resolve()
            if target.is_file():
                listed.add(target)
            elif not (target.is_dir() and kustomization_file(target)):
                problems.append(f"{rel(kfile)}: resource {r!r} is neither a file nor a "
                                "kustomization directory")
        for p in k.get("patches") or []:
            if isinstance(p, dict) and "path" in p:
                patches.add((kfile.parent / p["path"]).resolve())
    count = 0
    manifest_files = 0
    for f in files:
        if f.name in KUSTOMIZATION_NAMES or f.resolve() in NON_MANIFESTS:
            continue
        docs = load_yaml_docs(f)
        if f.resolve() in patches:
            # Partial objects: validated as part of the rendered overlay (check 2).
            for d in docs:
                if not (isinstance(d, dict) and d.get("kind") and (d.get("metadata") or {}).get("name")):
                    problems.append(f"{rel(f)}: a patch needs kind and metadata.name")
            continue
        if f.resolve() not in listed:
            problems.append(f"{rel(f)}: not listed in any kustomization's resources "
                            "(add it, or remove the file)")
        manifest_files += 1
        for i, d in enumerate(docs):
            count += 1
            problems += k8s_validate(d, f"{rel(f)}[{i}]", version)
    if problems:
        raise CheckError("\n".join(problems))
    return (f"{count} objects in {manifest_files} files valid against the Kubernetes "
            f"{version} schemas (strict)")


# ---------------------------------------------------------------------------------------------
# A small kustomize: resources, namespace, images, strategic-merge patches. Anything else in a
# kustomization is refused, which keeps the overlays simple enough for this to be right.

KUSTOMIZE_FIELDS = {"apiVersion", "kind", "resources", "namespace", "images", "patches"}
CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition",
                  "PersistentVolume", "StorageClass", "PriorityClass", "IngressClass",
                  "APIService", "ValidatingWebhookConfiguration",
                  "MutatingWebhookConfiguration"}
# Strategic-merge keys of the lists a patch may touch (from the Kubernetes API types); other
# lists are replaced whole, as strategic merge does for lists without a merge key.
MERGE_KEYS = {"containers": "name", "initContainers": "name", "ephemeralContainers": "name",
              "env": "name", "volumes": "name", "volumeMounts": "mountPath",
              "imagePullSecrets": "name", "hostAliases": "ip",
              "topologySpreadConstraints": "topologyKey"}


def merge_key(field: str, items: list) -> str | None:
    if field == "ports":  # container ports merge on containerPort, Service ports on port
        return "containerPort" if all("containerPort" in i for i in items) else "port"
    return MERGE_KEYS.get(field)


def strategic_merge(base, patch, where: str):
    if not (isinstance(base, dict) and isinstance(patch, dict)):
        return copy.deepcopy(patch)
    out = copy.deepcopy(base)
    for key, value in patch.items():
        if key.startswith("$"):
            raise CheckError(f"{where}: patch directive {key} is not supported by the builtin "
                             "renderer")
        if value is None:
            out.pop(key, None)
        elif isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = strategic_merge(out[key], value, where)
        elif (isinstance(out.get(key), list) and isinstance(value, list)
              and all(isinstance(i, dict) for i in out[key] + value)
              and (mk := merge_key(key, out[key] + value))):
            # Order as kustomize leaves it: the patch's items first, in the patch's order
            # (merged into the original item of the same key), then the untouched originals.
            original, first = out[key], []
            for item in value:
                match = next((x for x in original if x.get(mk) == item.get(mk)), None)
                if match is None:
                    first.append(copy.deepcopy(item))
                else:
                    first.append(strategic_merge(match, item, where))
            patched = {item.get(mk) for item in value}
            out[key] = first + [x for x in original if x.get(mk) not in patched]
        else:
            out[key] = copy.deepcopy(value)
    return out


def split_image(image: str) -> tuple[str, str]:
    """'registry:5000/name:tag' -> ('registry:5000/name', ':tag'); digests kept likewise."""
    if "@" in image:
        name, digest = image.split("@", 1)
        return name, "@" + digest
    slash, colon = image.rfind("/"), image.rfind(":")
    if colon > slash:
        return image[:colon], image[colon:]
    return image, ""


def set_images(node, images: list[dict]) -> None:
    if isinstance(node, dict):
        for field in ("containers", "initContainers", "ephemeralContainers"):
            for c in node.get(field) or []:
                if isinstance(c, dict) and "image" in c:
                    name, suffix = split_image(c["image"])
                    for img in images:
                        if img.get("name") == name:
                            new = img.get("newName", name)
                            if "digest" in img:
                                suffix = "@" + img["digest"]
                            elif "newTag" in img:
                                suffix = ":" + str(img["newTag"])
                            c["image"] = new + suffix
        for v in node.values():
            set_images(v, images)
    elif isinstance(node, list):
        for v in node:
            set_images(v, images)


def builtin_render(directory: Path) -> list[dict]:
    kfile = kustomization_file(directory)
    if kfile is None:
        raise CheckError(f"{rel(directory)}: no kustomization.yaml")
    k = load_yaml(kfile) or {}
    unsupported = set(k) - KUSTOMIZE_FIELDS
    if unsupported:
        raise CheckError(f"{rel(kfile)}: {', '.join(sorted(unsupported))} not supported by the "
                         "builtin renderer (keep overlays to resources, namespace, images, "
                         "patches)")
    objs: list[dict] = []
    for r in k.get("resources") or []:
        target = (directory / r).resolve()
        if target.is_dir():
            objs += builtin_render(target)
        elif target.is_file():
            objs += load_yaml_docs(target)
        else:
            raise CheckError(f"{rel(kfile)}: resource {r!r} not found (remote resources are "
                             "not supported)")
    for p in k.get("patches") or []:
        if not isinstance(p, dict) or set(p) != {"path"}:
            raise CheckError(f"{rel(kfile)}: only `patches: - path: FILE` (strategic merge) is "
                             "supported by the builtin renderer")
        ppath = (directory / p["path"]).resolve()
        for patch in load_yaml_docs(ppath):
            kind, name = patch.get("kind"), (patch.get("metadata") or {}).get("name")
            hits = [i for i, o in enumerate(objs)
                    if o.get("kind") == kind and (o.get("metadata") or {}).get("name") == name]
            if len(hits) != 1:
                raise CheckError(f"{rel(ppath)}: patch for {kind}/{name} matches {len(hits)} "
                                 "objects")
            objs[hits[0]] = strategic_merge(objs[hits[0]], patch, rel(ppath))
    if k.get("namespace"):
        for o in objs:
            if o.get("kind") not in CLUSTER_SCOPED:
                o.setdefault("metadata", {})["namespace"] = k["namespace"]
    if k.get("images"):
        for o in objs:
            set_images(o, k["images"])
    return objs


def external_renderer() -> list[str] | None:
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    return None


def external_render(cmd: list[str], directory: Path) -> list[dict]:
    import yaml
    res = subprocess.run([*cmd, str(directory)], capture_output=True, text=True, timeout=120)
    if res.returncode != 0:
        raise CheckError(f"{' '.join(cmd)} {rel(directory)} failed:\n{res.stderr.strip()}")
    return [d for d in yaml.safe_load_all(res.stdout) if d is not None]


def by_id(objs: list[dict]) -> dict[str, dict]:
    return {f"{o.get('apiVersion')}|{obj_id(o)}": o for o in objs}


def first_difference(a, b, path: str = "") -> str | None:
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b), key=str):
            if k not in a or k not in b:
                return f"{path}.{k}: builtin {a.get(k)!r} vs kustomize {b.get(k)!r}"
            d = first_difference(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        return None
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            d = first_difference(x, y, f"{path}[{i}]")
            if d:
                return d
        return None
    if a != b:
        return f"{path or '.'}: builtin {json.dumps(a)[:300]} vs kustomize {json.dumps(b)[:300]}"
    return None


def diff_renders(a: list[dict], b: list[dict]) -> list[str]:
    da, db = by_id(a), by_id(b)
    out = [f"only in kustomize's output: {k}" for k in sorted(set(db) - set(da))]
    out += [f"only in the builtin renderer's output: {k}" for k in sorted(set(da) - set(db))]
    for k in sorted(set(da) & set(db)):
        d = first_difference(da[k], db[k])
        if d:
            out.append(f"{k} differs at {d}")
    return out


# Cross-references in the rendered objects.

WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet"}


def pod_spec(o: dict) -> dict:
    return ((o.get("spec") or {}).get("template") or {}).get("spec") or {}


def pod_labels(o: dict) -> dict:
    return (((o.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}


def selects(selector: dict, labels: dict) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def check_references(objs: list[dict], adapter_metrics: set[str]) -> list[str]:
    problems = []
    named: dict[tuple[str, str], dict] = {}
    for o in objs:
        key = (o["kind"], o["metadata"]["name"])
        if key in named:
            problems.append(f"two objects named {o['kind']}/{key[1]}")
        named[key] = o
    secrets = {n: set((o.get("data") or {})) | set((o.get("stringData") or {}))
               for (kind, n), o in named.items() if kind == "Secret"}
    configmaps = {n: set((o.get("data") or {})) for (kind, n), o in named.items()
                  if kind == "ConfigMap"}
    workloads = [o for o in objs if o["kind"] in WORKLOADS]

    for w in workloads:
        wid = obj_id(w)
        spec = pod_spec(w)
        sc = spec.get("securityContext") or {}
        for c in spec.get("containers") or []:
            cid = f"{wid} container {c.get('name')}"
            csc = c.get("securityContext") or {}
            if not (csc.get("runAsNonRoot", sc.get("runAsNonRoot"))):
                problems.append(f"{cid}: runAsNonRoot is not set")
            for ef in c.get("envFrom") or []:
                if "configMapRef" in ef and ef["configMapRef"]["name"] not in configmaps:
                    problems.append(f"{cid}: envFrom ConfigMap {ef['configMapRef']['name']} missing")
                if "secretRef" in ef and ef["secretRef"]["name"] not in secrets:
                    problems.append(f"{cid}: envFrom Secret {ef['secretRef']['name']} missing")
            for e in c.get("env") or []:
                ref = (e.get("valueFrom") or {})
                if "secretKeyRef" in ref:
                    n, key = ref["secretKeyRef"]["name"], ref["secretKeyRef"]["key"]
                    if key not in secrets.get(n, set()):
                        problems.append(f"{cid}: env {e['name']} wants Secret {n} key {key}: missing")
                if "configMapKeyRef" in ref:
                    n, key = ref["configMapKeyRef"]["name"], ref["configMapKeyRef"]["key"]
                    if key not in configmaps.get(n, set()):
                        problems.append(f"{cid}: env {e['name']} wants ConfigMap {n} key {key}: missing")
            port_names = {p.get("name") for p in c.get("ports") or []}
            for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if isinstance(port, str) and port not in port_names:
                    problems.append(f"{cid}: {probe} uses port {port!r}, not a named port")
        for v in spec.get("volumes") or []:
            if "secret" in v and v["secret"]["secretName"] not in secrets:
                problems.append(f"{wid}: volume {v['name']}: Secret {v['secret']['secretName']} missing")
            if "configMap" in v and v["configMap"]["name"] not in configmaps:
                problems.append(f"{wid}: volume {v['name']}: ConfigMap {v['configMap']['name']} missing")

    for o in objs:
        if o["kind"] == "Service":
            sel = (o.get("spec") or {}).get("selector") or {}
            targets = [w for w in workloads if selects(sel, pod_labels(w))]
            if not targets:
                problems.append(f"{obj_id(o)}: selector matches no workload's pods")
            for p in (o.get("spec") or {}).get("ports") or []:
                tp = p.get("targetPort")
                if isinstance(tp, str) and not any(
                        tp == cp.get("name") and p.get("protocol", "TCP") == cp.get("protocol", "TCP")
                        for w in targets for c in pod_spec(w).get("containers") or []
                        for cp in c.get("ports") or []):
                    problems.append(f"{obj_id(o)}: targetPort {tp!r} ({p.get('protocol', 'TCP')}) "
                                    "is no container port of the selected pods")
        if o["kind"] == "PodDisruptionBudget":
            sel = ((o.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if not any(selects(sel, pod_labels(w)) for w in workloads):
                problems.append(f"{obj_id(o)}: selector matches no workload's pods")
        if o["kind"] == "HorizontalPodAutoscaler":
            ref = o["spec"]["scaleTargetRef"]
            target = named.get((ref["kind"], ref["name"]))
            if target is None:
                problems.append(f"{obj_id(o)}: scaleTargetRef {ref['kind']}/{ref['name']} missing")
            elif "replicas" in target.get("spec", {}):
                problems.append(f"{obj_id(target)}: sets spec.replicas although {obj_id(o)} "
                                "scales it (every apply would reset the autoscaler's count)")
            for m in o["spec"].get("metrics") or []:
                if m.get("type") == "Pods":
                    name = m["pods"]["metric"]["name"]
                    if name not in GAUGES:
                        problems.append(f"{obj_id(o)}: metric {name} is not a known gauge")
                    if name not in adapter_metrics:
                        problems.append(f"{obj_id(o)}: metric {name} is not served by the "
                                        f"prometheus-adapter rules in {rel(ADAPTER_VALUES)}")

    # What the operations of issue 8 rely on.
    zone = named.get(("StatefulSet", "zone"))
    if zone is None:
        problems.append("no StatefulSet/zone")
    else:
        spec = pod_spec(zone)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace < ZONE_MIN_GRACE_K8S_S:
            problems.append(f"StatefulSet/zone: terminationGracePeriodSeconds {grace} < "
                            f"{ZONE_MIN_GRACE_K8S_S} (zones drain for up to 25 s)")
        for c in spec.get("containers") or []:
            for field in ("readinessProbe", "livenessProbe"):
                if field not in c:
                    problems.append(f"StatefulSet/zone container {c['name']}: no {field}")
            if "preStop" not in (c.get("lifecycle") or {}):
                problems.append(f"StatefulSet/zone container {c['name']}: no preStop hook")
        svc = named.get(("Service", zone["spec"].get("serviceName")))
        if svc is None or svc["spec"].get("clusterIP") != "None":
            problems.append("StatefulSet/zone: serviceName must name a headless Service")
    if not any(o["kind"] == "PodDisruptionBudget" for o in objs):
        problems.append("no PodDisruptionBudget")
    gw = named.get(("Service", "gateway"))
    if gw is None or gw["spec"].get("type") != "LoadBalancer" or not any(
            p.get("protocol") == "UDP" for p in gw["spec"].get("ports") or []):
        problems.append("Service/gateway must be a LoadBalancer with a UDP port")
    return problems


def adapter_rule_metrics() -> tuple[set[str], list[str]]:
    """Names the prometheus-adapter rules serve, and problems with the values file."""
    values = load_yaml(ADAPTER_VALUES) or {}
    served, problems = set(), []
    for r in ((values.get("rules") or {}).get("custom") or []):
        series = r.get("seriesQuery", "")
        bad = unknown_metrics(series)
        if bad:
            problems.append(f"{rel(ADAPTER_VALUES)}: seriesQuery names unknown metrics "
                            f"{sorted(bad)}")
        name = (r.get("name") or {}).get("as") or next(iter(promql_metrics(series)), None)
        if name:
            served.add(name)
        overrides = (r.get("resources") or {}).get("overrides") or {}
        if not {"namespace", "pod"} <= set(overrides):
            problems.append(f"{rel(ADAPTER_VALUES)}: rule for {name} must map the namespace and "
                            "pod labels to resources (a Pods metric)")
    if not served:
        problems.append(f"{rel(ADAPTER_VALUES)}: no rules.custom")
    return served, problems


def check_overlays(version: str, force_builtin: bool) -> str:
    overlays = sorted(d for d in OVERLAYS_DIR.iterdir() if d.is_dir() and kustomization_file(d))
    if not overlays:
        raise CheckError(f"no overlays under {rel(OVERLAYS_DIR)}")
    served, problems = adapter_rule_metrics()
    cmd = None if force_builtin else external_renderer()
    summary = []
    for d in overlays:
        builtin = builtin_render(d)
        if cmd:
            rendered = external_render(cmd, d)
            diff = diff_renders(builtin, rendered)
            problems += [f"{rel(d)}: builtin renderer disagrees with {' '.join(cmd)}: {x}"
                         for x in diff]
        else:
            rendered = builtin
        for o in rendered:
            problems += k8s_validate(o, f"{rel(d)} (rendered)", version)
        problems += [f"{rel(d)}: {p}" for p in check_references(rendered, served)]
        summary.append(f"{rel(d)}: {len(rendered)} objects")
    if problems:
        raise CheckError("\n".join(problems))
    how = (f"rendered with {' '.join(cmd)} (builtin renderer agrees)" if cmd
           else "rendered with the builtin renderer")
    return (f"{'; '.join(summary)}; {how}; valid against the Kubernetes {version} schemas "
            "(strict), references and HPA/adapter metric consistent")


# ---------------------------------------------------------------------------------------------
# Compose.

def compose_list(value) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return value.split()
    return [str(v) for v in value]


def check_compose() -> str:
    c = load_yaml(COMPOSE) or {}
    services = c.get("services") or {}
    problems = []
    for name in COMPOSE_SERVICES:
        if name not in services:
            problems.append(f"service {name} missing")
        elif (services[name] or {}).get("profiles"):
            problems.append(f"service {name} must start by default (no profiles)")
    for name, profile in COMPOSE_OPTIONAL.items():
        if name not in services:
            problems.append(f"service {name} missing")
        elif profile not in ((services[name] or {}).get("profiles") or []):
            problems.append(f"service {name} must be under the profile {profile!r}")
    declared_volumes = set((c.get("volumes") or {}))
    base = COMPOSE.parent
    for name, s in services.items():
        s = s or {}
        deps = s.get("depends_on") or []
        for dep in (deps if isinstance(deps, list) else list(deps)):
            if dep not in services:
                problems.append(f"{name}: depends_on names unknown service {dep!r}")
        for v in s.get("volumes") or []:
            if isinstance(v, dict):
                kind, source = v.get("type"), v.get("source")
            else:
                source = str(v).split(":", 1)[0] if ":" in str(v) else None
                kind = "bind" if source and source.startswith((".", "/", "~")) else "volume"
            if kind == "bind":
                host = (base / os.path.expanduser(source)).resolve()
                if not host.exists():
                    problems.append(f"{name}: bind-mounted host path {source} does not exist "
                                    f"({rel(host)})")
            elif kind == "volume" and source and source not in declared_volumes:
                problems.append(f"{name}: volume {source} is not declared under volumes:")
        build = s.get("build")
        if build:
            ctx = base / (build if isinstance(build, str) else build.get("context", "."))
            dockerfile = "Dockerfile" if isinstance(build, str) else build.get("dockerfile", "Dockerfile")
            if not (ctx / dockerfile).is_file():
                problems.append(f"{name}: build dockerfile {rel(ctx / dockerfile)} missing")
    redis = services.get("redis") or {}
    args = compose_list(redis.get("entrypoint")) + compose_list(redis.get("command"))
    if not any(a == "--appendonly" and i + 1 < len(args) and args[i + 1] == "yes"
               for i, a in enumerate(args)):
        problems.append("redis must run with --appendonly yes (the hot tier holds acknowledged "
                        "checkpoints)")
    for z in (n for n in COMPOSE_SERVICES if n.startswith("zone-")):
        grace = (services.get(z) or {}).get("stop_grace_period", "10s")
        if duration_s(grace) < ZONE_MIN_GRACE_COMPOSE_S:
            problems.append(f"{z}: stop_grace_period {grace} < {ZONE_MIN_GRACE_COMPOSE_S}s "
                            "(zones drain for up to 25 s)")
    if problems:
        raise CheckError("\n".join(problems))
    return (f"{rel(COMPOSE)}: {len(services)} services (load-test under its profile), "
            "depends_on, bind mounts, Redis AOF and zone drain time ok")


# ---------------------------------------------------------------------------------------------
# Dockerfile.

def dockerfile_instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    out, current = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment lines inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def dockerignore_patterns(path: Path) -> list[tuple[bool, re.Pattern]]:
    patterns = []
    if not path.exists():
        return patterns
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pat = line[1:] if negate else line
        pat = pat.strip("/")
        rx = ""
        i = 0
        while i < len(pat):
            if pat.startswith("**/", i):
                rx += "(?:.*/)?"
                i += 3
            elif pat.startswith("**", i):
                rx += ".*"
                i += 2
            elif pat[i] == "*":
                rx += "[^/]*"
                i += 1
            elif pat[i] == "?":
                rx += "[^/]"
                i += 1
            else:
                rx += re.escape(pat[i])
                i += 1
        patterns.append((negate, re.compile(rx + r"\Z")))
    return patterns


def ignored(path: str, patterns) -> bool:
    """Docker's rule: the last matching pattern wins; a pattern matching a parent directory
    excludes everything below it."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[:i]) for i in range(1, len(parts) + 1)]
    result = False
    for negate, rx in patterns:
        if any(rx.match(c) for c in candidates):
            result = not negate
    return result


def check_dockerfile() -> str:
    problems = []
    patterns = dockerignore_patterns(DOCKERIGNORE)
    copied: list[str] = []
    final_user = None
    for instr, args in dockerfile_instructions(DOCKERFILE):
        if instr == "FROM":
            final_user = None
        if instr == "USER":
            final_user = args.split(":")[0]
        if instr not in ("COPY", "ADD"):
            continue
        if args.startswith("["):
            words = json.loads(args)
        else:
            words = args.split()
        flags = [w for w in words if w.startswith("--")]
        paths = [w for w in words if not w.startswith("--")]
        if any(f.startswith("--from") for f in flags):
            continue  # from another stage, not from the build context
        if len(paths) < 2:
            problems.append(f"{instr} {args}: needs a source and a destination")
            continue
        for src in paths[:-1]:
            if re.match(r"^[a-z]+://", src):
                problems.append(f"{instr} {src}: remote sources are not used in this image")
                continue
            matches = list(REPO.glob(src.rstrip("/"))) if any(ch in src for ch in "*?[") \
                else [REPO / src]
            if not matches or not all(m.exists() for m in matches):
                problems.append(f"{instr} {src}: not found in the build context (repository root)")
                continue
            for m in matches:
                r = str(m.relative_to(REPO))
                if ignored(r, patterns):
                    problems.append(f"{instr} {src}: excluded by {rel(DOCKERIGNORE)}")
                copied.append(r)
    if final_user in (None, "0", "root"):
        problems.append("the runtime stage must switch to a non-root USER")
    # Every workspace member must reach the build, or `cargo build` fails in the image only.
    cargo = tomllib.loads((REPO / "Cargo.toml").read_text())
    members = cargo.get("workspace", {}).get("members", [])
    needed = ["Cargo.toml", "Cargo.lock", *members]
    for m in needed:
        if not any(m == c or m.startswith(c.rstrip("/") + "/") or c == "." for c in copied):
            problems.append(f"{m} is not copied into the build stage")
    if problems:
        raise CheckError("\n".join(problems))
    return (f"{rel(DOCKERFILE)}: {len(copied)} COPY sources exist and are not dockerignored; "
            f"all {len(members)} workspace members copied; runs as USER {final_user}")


# ---------------------------------------------------------------------------------------------
# Prometheus, alerts, Grafana.

def dashboard_panels(panels: list) -> list[dict]:
    out = []
    for p in panels or []:
        out.append(p)
        out += dashboard_panels(p.get("panels"))  # collapsed rows hold their panels
    return out


def check_dashboard() -> str:
    problems = []
    try:
        dash = json.loads(DASHBOARD.read_text())
    except json.JSONDecodeError as e:
        raise CheckError(f"{rel(DASHBOARD)}: JSON does not parse: {e}") from None
    for field in ("uid", "title", "panels"):
        if not dash.get(field):
            problems.append(f"{rel(DASHBOARD)}: no {field}")
    panels = [p for p in dashboard_panels(dash.get("panels")) if p.get("type") != "row"]
    ids = [p.get("id") for p in dashboard_panels(dash.get("panels"))]
    if len(ids) != len(set(ids)):
        problems.append(f"{rel(DASHBOARD)}: panel ids are not unique")
    exprs = 0
    for p in panels:
        targets = p.get("targets") or []
        if not targets:
            problems.append(f"panel {p.get('title')!r}: no queries")
        for t in targets:
            expr = t.get("expr", "")
            exprs += 1
            if not expr:
                problems.append(f"panel {p.get('title')!r} query {t.get('refId')}: empty expr")
            bad = unknown_metrics(expr)
            if bad:
                problems.append(f"panel {p.get('title')!r}: unknown metrics {sorted(bad)} in {expr}")
    # The provisioning files parse, and the dashboards provider reads where compose mounts them.
    provider_paths = set()
    for f in sorted(GRAFANA_PROVISIONING.rglob("*.y*ml")):
        doc = load_yaml(f) or {}
        for prov in doc.get("providers") or []:
            provider_paths.add((prov.get("options") or {}).get("path"))
    compose = load_yaml(COMPOSE) or {}
    mounts = [str(v).split(":")[1] for v in
              ((compose.get("services") or {}).get("grafana") or {}).get("volumes") or []
              if ":" in str(v)]
    for path in provider_paths:
        if path not in mounts:
            problems.append(f"grafana dashboards provider reads {path}, which compose does not "
                            "mount")
    if problems:
        raise CheckError("\n".join(problems))
    return (f"{rel(DASHBOARD)}: {len(panels)} panels, {exprs} queries, every metric known; "
            "provisioning parses")


def check_alerts() -> str:
    problems = []
    rules_doc = load_yaml(ALERTS) or {}
    doc_text = OPERATIONS_DOC.read_text() if OPERATIONS_DOC.exists() else ""
    headings = set(re.findall(r"^#{2,4}\s+(\S+)\s*$", doc_text, re.M))
    names = []
    groups = rules_doc.get("groups") or []
    if not groups:
        problems.append(f"{rel(ALERTS)}: no groups")
    for g in groups:
        for r in g.get("rules") or []:
            name = r.get("alert") or r.get("record")
            if not name or not r.get("expr"):
                problems.append(f"group {g.get('name')}: a rule without alert/record or expr")
                continue
            bad = unknown_metrics(str(r["expr"]))
            if bad:
                problems.append(f"{name}: unknown metrics {sorted(bad)}")
            if "for" in r:
                try:
                    duration_s(r["for"])
                except CheckError as e:
                    problems.append(f"{name}: {e}")
            if "alert" not in r:
                continue
            names.append(name)
            if (r.get("labels") or {}).get("severity") not in ("critical", "warning", "info"):
                problems.append(f"{name}: labels.severity must be critical, warning or info")
            ann = r.get("annotations") or {}
            for field in ("summary", "description", "runbook_url"):
                if not ann.get(field):
                    problems.append(f"{name}: no annotations.{field}")
            if ann.get("runbook_url") and not ann["runbook_url"].endswith(
                    "docs/operations.md#" + name.lower()):
                problems.append(f"{name}: runbook_url must point at docs/operations.md#{name.lower()}")
            if name not in headings:
                problems.append(f"{name}: not explained in {rel(OPERATIONS_DOC)} (a heading "
                                f"`### {name}`)")
    if len(names) != len(set(names)):
        problems.append("alert names are not unique")
    promtool = shutil.which("promtool")
    if promtool:
        res = subprocess.run([promtool, "check", "rules", str(ALERTS)], capture_output=True,
                             text=True, timeout=60)
        if res.returncode != 0:
            problems.append(f"promtool check rules: {res.stdout.strip()} {res.stderr.strip()}")
    # The compose Prometheus loads these rules and scrapes every worldmesh service.
    prom = load_yaml(PROMETHEUS_CONFIG) or {}
    compose = load_yaml(COMPOSE) or {}
    services = compose.get("services") or {}
    mounted = {str(v).split(":")[1]: str(v).split(":")[0]
               for v in (services.get("prometheus") or {}).get("volumes") or [] if ":" in str(v)}
    for rf in prom.get("rule_files") or []:
        src = mounted.get(rf)
        if src is None or (COMPOSE.parent / src).resolve() != ALERTS.resolve():
            problems.append(f"{rel(PROMETHEUS_CONFIG)}: rule file {rf} is not {rel(ALERTS)} "
                            "mounted by compose")
    if not prom.get("rule_files"):
        problems.append(f"{rel(PROMETHEUS_CONFIG)}: no rule_files")
    targets = {t for job in prom.get("scrape_configs") or []
               for sc in job.get("static_configs") or [] for t in sc.get("targets") or []}
    image = (services.get("coordinator") or {}).get("image")
    for name, s in services.items():
        s = s or {}
        if s.get("image") == image and not s.get("profiles") and f"{name}:9100" not in targets:
            problems.append(f"{rel(PROMETHEUS_CONFIG)}: does not scrape {name}:9100")
    if problems:
        raise CheckError("\n".join(problems))
    return (f"{rel(ALERTS)}: {len(names)} alerts in {len(groups)} groups, every metric known, "
            f"each documented in {rel(OPERATIONS_DOC)}"
            + ("; promtool check rules passed" if promtool else "")
            + f"; {rel(PROMETHEUS_CONFIG)} loads them and scrapes every worldmesh service")


# ---------------------------------------------------------------------------------------------

def main() -> int:
    ensure_dependencies()
    force_builtin = "--builtin-renderer" in sys.argv[1:]
    os.chdir(REPO)
    version = k8s_version()
    checks = [
        ("kubernetes manifests", lambda: check_kubernetes_manifests(version)),
        ("kustomize overlays", lambda: check_overlays(version, force_builtin)),
        ("compose", check_compose),
        ("Dockerfile", check_dockerfile),
        ("grafana dashboard", check_dashboard),
        ("prometheus alerts", check_alerts),
    ]
    failed = 0
    for name, fn in checks:
        try:
            detail = fn()
            print(f"ok   {name}: {detail}", flush=True)
        except CheckError as e:
            failed += 1
            lines = str(e).splitlines()
            print(f"FAIL {name}: {len(lines)} problem(s)", flush=True)
            for line in lines:
                print(f"       {line}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
