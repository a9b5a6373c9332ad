#!/usr/bin/env python3
"""Checks for the Helm chart and the deployment examples.

Needs `helm-python-sdk` (the Helm engine, no helm binary) and
`kubernetes-validate` (Kubernetes JSON schemas) in the running Python:

    python3 ci/chart_test.py

Prints one line per check, then `chart tests: N passed, M failed`;
exits 1 if any check failed.
"""

from __future__ import annotations

import json
import re
import sys
import traceback
from pathlib import Path
from typing import Any, Callable

import yaml
import kubernetes_validate
from helm_python.chart import Chart, lint

ROOT = Path(__file__).resolve().parent.parent
CHART_DIR = ROOT / "charts" / "drainwait"
EXAMPLES = ROOT / "examples"
ARGO = EXAMPLES / "argo-workflows"

# Oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and the newest
# schema kubernetes-validate ships.
K8S_VERSIONS = ["1.26", kubernetes_validate.latest_version()]
# Native sidecars (init container restartPolicy Always) are on by default from 1.29.
NATIVE_SIDECAR_VERSIONS = ["1.29", kubernetes_validate.latest_version()]

NAMESPACE = "argo"

# SPEC.md "Least privilege", as (apiGroup, resource, verb).
SPEC_RULES = {
    ("", "pods", "get"),
    ("", "services", "get"),
    ("discovery.k8s.io", "endpointslices", "list"),
    ("discovery.k8s.io", "endpointslices", "watch"),
    ("events.k8s.io", "events", "create"),
    ("events.k8s.io", "events", "patch"),
}
AWS_RULES = {
    ("elbv2.k8s.aws", "targetgroupbindings", "list"),
    ("elbv2.k8s.aws", "targetgroupbindings", "watch"),
}
IAM_ACTIONS = {
    "elasticloadbalancing:DescribeTargetHealth",
    "elasticloadbalancing:DescribeTargetGroups",
}

# SPEC defaults, in seconds, that the grace period must cover.
ENDPOINTS_SETTLE, LB_SETTLE, SHUTDOWN_RESERVE = 2, 15, 5
# Smallest plausible time for aws-load-balancer-controller to deregister a target.
MIN_LB_REACTION = 5

# What argo-helm's templates/server/server-deployment.yaml adds around the
# server.* values (chart 0.46): see build_argo_deployment().
ARGO_SERVER_IMAGE = "quay.io/argoproj/argocli:v3.7.7"
ARGO_SA = "argo-workflows-server"

# Sidecar examples (`drainwait serve`) and the server.* list their sidecar is in.
SIDECAR_FILES = {"values-sidecar.yaml": "extraInitContainers", "values-sidecar-plain.yaml": "extraContainers"}
# SPEC: DRAINWAIT_LISTEN default.
DEFAULT_LISTEN = "0.0.0.0:9090"

passed = 0
failures: list[str] = []


def check(name: str, fn: Callable[[], None]) -> None:
    global passed
    try:
        fn()
    except Exception as exc:  # report every failing check, then exit 1
        detail = str(exc) or type(exc).__name__
        if not isinstance(exc, AssertionError):
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        failures.append(name)
        print(f"FAIL {name}: {detail}")
    else:
        passed += 1
        print(f"ok   {name}")


# ---------------------------------------------------------------- helpers


def render(values: dict[str, Any] | None = None, name: str = "drainwait") -> tuple[list[dict], str]:
    """Render the chart; return its objects and NOTES.txt."""
    with Chart.load(CHART_DIR) as chart:
        out = chart.render(values, name=name, namespace=NAMESPACE, is_install=True)
    objects: list[dict] = []
    notes = ""
    for path, text in sorted(out.items()):
        if path.endswith("NOTES.txt"):
            notes = text
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                objects.append(doc)
    return objects, notes


def validate_k8s(obj: dict, what: str, versions: list[str] = K8S_VERSIONS) -> None:
    for version in versions:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = "/".join(str(p) for p in exc.absolute_path)
            raise AssertionError(f"{what} invalid for Kubernetes {version} at '{path}': {exc.message}")
        except kubernetes_validate.SchemaNotFoundError as exc:
            raise AssertionError(f"{what}: {exc.message}")


def only(objects: list[dict], kind: str) -> dict:
    found = [o for o in objects if o.get("kind") == kind]
    assert len(found) == 1, f"expected one {kind}, got {len(found)}"
    return found[0]


def rule_set(role: dict) -> set[tuple[str, str, str]]:
    triples = set()
    for rule in role.get("rules", []):
        extra = set(rule) - {"apiGroups", "resources", "verbs"}
        assert not extra, f"rule {rule} has {sorted(extra)}"
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                for verb in rule["verbs"]:
                    assert "*" not in (group, resource, verb), f"wildcard in {rule}"
                    triples.add((group, resource, verb))
    return triples


def fmt(triples: set[tuple[str, str, str]]) -> str:
    return ", ".join(f"{g or 'core'}/{r}:{v}" for g, r, v in sorted(triples)) or "-"


def assert_rules(role: dict, want: set[tuple[str, str, str]]) -> None:
    got = rule_set(role)
    assert got == want, f"Role rules differ from SPEC: missing [{fmt(want - got)}], extra [{fmt(got - want)}]"


def seconds(text: str) -> float:
    """Parse a drainwait duration (90s, 2m, 1m30s, 500ms, bare 90)."""
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        return float(text)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+)(ms|h|m|s)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    return sum(int(n) * units[u] for n, u in parts)


def load_yaml(path: Path) -> list[Any]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def env_map(env: list[dict]) -> dict[str, dict]:
    return {e["name"]: e for e in env}


def build_argo_deployment(server: dict) -> dict:
    """The argo-server Deployment as argo-helm's server-deployment.yaml builds it
    from these server.* values (extraInitContainers, extraContainers, volumes,
    volumeMounts, lifecycle, extraEnv, terminationGracePeriodSeconds, image)."""
    image = ARGO_SERVER_IMAGE
    if "image" in server:
        img = server["image"]
        image = f"{img['registry']}/{img['repository']}:{img['tag']}"
    labels = {"app.kubernetes.io/name": "argo-workflows-server", "app.kubernetes.io/instance": "argo-workflows"}
    container = {
        "name": "argo-server",
        "image": image,
        "args": ["server", "--configmap=argo-workflows-workflow-controller-configmap", "--secure=false"],
        "ports": [{"name": "web", "containerPort": 2746}],
        "readinessProbe": {"httpGet": {"path": "/", "port": 2746, "scheme": "HTTP"}, "initialDelaySeconds": 10, "periodSeconds": 20},
        "env": [
            {"name": "IN_CLUSTER", "value": "true"},
            {"name": "ARGO_NAMESPACE", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}},
            {"name": "ARGO_BASE_HREF", "value": "/"},
        ] + server.get("extraEnv", []),
        "securityContext": {"readOnlyRootFilesystem": False, "runAsNonRoot": True, "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}] + server.get("volumeMounts", []),
    }
    if server.get("lifecycle"):
        container["lifecycle"] = server["lifecycle"]
    spec: dict[str, Any] = {
        "serviceAccountName": ARGO_SA,
        "containers": [container] + server.get("extraContainers", []),
        "volumes": [{"name": "tmp", "emptyDir": {}}] + server.get("volumes", []),
    }
    if server.get("extraInitContainers"):
        spec["initContainers"] = server["extraInitContainers"]
    if server.get("terminationGracePeriodSeconds"):
        spec["terminationGracePeriodSeconds"] = server["terminationGracePeriodSeconds"]
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "argo-workflows-server", "namespace": NAMESPACE, "labels": labels},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {"metadata": {"labels": labels}, "spec": spec},
        },
    }


def argo_values(name: str) -> dict:
    docs = load_yaml(ARGO / name)
    assert len(docs) == 1 and isinstance(docs[0], dict), f"{name}: expected one mapping"
    server = docs[0].get("server")
    assert isinstance(server, dict), f"{name}: no server: section"
    return server


def drainwait_env(server: dict, name: str) -> list[dict]:
    """The env drainwait runs with: the sidecar's for the sidecar examples,
    argo-server's extraEnv (the preStop exec inherits it) for the others."""
    if name in SIDECAR_FILES:
        return sidecar_of(server, name).get("env", [])
    return server.get("extraEnv", [])


def sidecar_of(server: dict, name: str) -> dict:
    """The one `drainwait serve` container of a sidecar example, from the list
    SIDECAR_FILES names; the other list must not hold one too."""
    key = SIDECAR_FILES[name]
    other = ({"extraInitContainers", "extraContainers"} - {key}).pop()
    found = server.get(key) or []
    assert len(found) == 1, f"{name}: expected one container in server.{key}, got {len(found)}"
    assert not server.get(other), f"{name}: server.{other} set too (the sidecar belongs in server.{key})"
    return found[0]


def check_timing(server: dict, env_list: list[dict], what: str) -> None:
    grace = server.get("terminationGracePeriodSeconds")
    assert isinstance(grace, int), f"{what}: terminationGracePeriodSeconds must be set"
    floor = ENDPOINTS_SETTLE + MIN_LB_REACTION + LB_SETTLE + SHUTDOWN_RESERVE
    assert grace >= floor, f"{what}: grace {grace}s < {floor}s (settles + reserve + LB reaction)"
    env = env_map(env_list)
    reserve = seconds(env["DRAINWAIT_SHUTDOWN_RESERVE"]["value"]) if "DRAINWAIT_SHUTDOWN_RESERVE" in env else SHUTDOWN_RESERVE
    assert "DRAINWAIT_MAX_WAIT" in env, f"{what}: DRAINWAIT_MAX_WAIT not set"
    max_wait = seconds(env["DRAINWAIT_MAX_WAIT"]["value"])
    assert max_wait + reserve <= grace, f"{what}: DRAINWAIT_MAX_WAIT {max_wait}s + reserve {reserve}s > grace {grace}s"
    assert max_wait >= floor - reserve, f"{what}: DRAINWAIT_MAX_WAIT {max_wait}s too short for a normal drain"


def check_identity_env(env_list: list[dict], what: str) -> None:
    env = env_map(env_list)
    for var, field in (("POD_NAME", "metadata.name"), ("POD_NAMESPACE", "metadata.namespace")):
        assert var in env, f"{what}: {var} missing from drainwait's env"
        got = env[var].get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
        assert got == field, f"{what}: {var} fieldRef is {got!r}, want {field!r}"


def resolve_port(port: Any, container: dict, what: str) -> int:
    """A hook's port as kubelet resolves it: a number, or a name looked up in
    the ports of the container the hook belongs to (not of the pod)."""
    if isinstance(port, int):
        return port
    assert isinstance(port, str) and port, f"{what}: port {port!r}"
    if port.isdigit():
        return int(port)
    for p in container.get("ports", []):
        if p.get("name") == port:
            return p["containerPort"]
    raise AssertionError(f"{what}: named port {port!r} is not among {container['name']}'s own ports "
                         f"(kubelet resolves it there): {container.get('ports', [])}")


def listen_port(env_list: list[dict], what: str) -> int:
    """The port `drainwait serve` listens on (DRAINWAIT_LISTEN, else the SPEC
    default); its address must not be loopback, kubelet comes via the pod IP."""
    listen = env_map(env_list).get("DRAINWAIT_LISTEN", {"value": DEFAULT_LISTEN})
    assert "value" in listen, f"{what}: DRAINWAIT_LISTEN must be a plain value"
    host, sep, port = str(listen["value"]).rpartition(":")
    assert sep and port.isdigit(), f"{what}: DRAINWAIT_LISTEN {listen['value']!r} is not host:port"
    host = host.strip("[]")
    assert host not in ("localhost", "::1") and not host.startswith("127."), \
        f"{what}: DRAINWAIT_LISTEN {listen['value']!r} is loopback; kubelet's httpGet comes to the pod IP"
    return int(port)


def check_drain_hook(container: dict, port: int, what: str) -> None:
    """container's preStop is exactly an httpGet of /drain on `port`, to the pod IP."""
    pre = (container.get("lifecycle") or {}).get("preStop") or {}
    assert list(pre) == ["httpGet"], f"{what}: preStop must be only an httpGet, got {sorted(pre) or 'none'}"
    get = pre["httpGet"]
    assert get.get("path") == "/drain", f"{what}: preStop httpGet path {get.get('path')!r}, want '/drain'"
    assert "host" not in get, f"{what}: preStop httpGet sets host {get['host']!r}; leave it unset (kubelet uses the pod IP)"
    assert get.get("scheme", "HTTP") == "HTTP", f"{what}: preStop httpGet scheme {get['scheme']!r}; serve speaks plain HTTP"
    got = resolve_port(get.get("port"), container, what)
    assert got == port, f"{what}: preStop httpGet port {get.get('port')!r} (= {got}) != sidecar's serve port {port}"


def prestop_command(server: dict) -> list[str]:
    cmd = server.get("lifecycle", {}).get("preStop", {}).get("exec", {}).get("command")
    assert isinstance(cmd, list) and cmd, "server.lifecycle.preStop.exec.command missing"
    return cmd


# ------------------------------------------------------------------ chart


def t_lint() -> None:
    report = lint(CHART_DIR, strict=True, namespace=NAMESPACE)
    bad = [m for m in report["messages"] if m["severity"] >= 2]
    assert not report["errors"] and not bad, f"helm lint: {report['errors']} {bad}"


SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "aws.enabled=false": {"aws": {"enabled": False}},
    "serviceAccount.create=true": {
        "serviceAccount": {"create": True, "annotations": {"eks.amazonaws.com/role-arn": "arn:aws:iam::123456789012:role/drainwait"}}
    },
}


def t_scenario_valid(values: dict) -> Callable[[], None]:
    def run() -> None:
        objects, _ = render(values)
        assert objects, "nothing rendered"
        for obj in objects:
            validate_k8s(obj, f"{obj['kind']}/{obj['metadata']['name']}")
            assert obj["metadata"].get("namespace") == NAMESPACE, f"{obj['kind']} not in release namespace"
        kinds = sorted(o["kind"] for o in objects)
        assert "ClusterRole" not in kinds and "ClusterRoleBinding" not in kinds, "cluster-wide RBAC rendered"
    return run


def t_rules_default() -> None:
    assert_rules(only(render()[0], "Role"), SPEC_RULES | AWS_RULES)


def t_rules_no_aws() -> None:
    assert_rules(only(render({"aws": {"enabled": False}})[0], "Role"), SPEC_RULES)


def t_binding() -> None:
    objects, _ = render(name="drainwait")
    role, binding = only(objects, "Role"), only(objects, "RoleBinding")
    assert binding["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": role["metadata"]["name"]}
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": ARGO_SA, "namespace": NAMESPACE}], binding["subjects"]
    assert not [o for o in objects if o["kind"] == "ServiceAccount"], "ServiceAccount created by default"


def t_binding_other_namespace() -> None:
    binding = only(render({"serviceAccount": {"name": "web", "namespace": "apps"}})[0], "RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "web", "namespace": "apps"}], binding["subjects"]


def t_serviceaccount_create() -> None:
    values = SCENARIOS["serviceAccount.create=true"]
    objects, _ = render(values)
    sa = only(objects, "ServiceAccount")
    assert sa["metadata"]["name"] == ARGO_SA
    assert sa["metadata"]["annotations"] == values["serviceAccount"]["annotations"]
    assert only(objects, "RoleBinding")["subjects"][0]["name"] == ARGO_SA


def t_schema_rejects() -> None:
    with Chart.load(CHART_DIR) as chart:
        chart.validate_schema({})
        for bad in ({"bogus": 1}, {"aws": {"enable": True}}, {"serviceAccount": {"name": "Not_A_Name"}}):
            try:
                chart.validate_schema(bad)
            except Exception:
                continue
            raise AssertionError(f"values.schema.json accepted {bad}")


def t_notes() -> None:
    _, notes = render()
    want = f"kubectl -n {NAMESPACE} exec deploy/argo-workflows-server -- /drainwait-bin/drainwait check"
    assert want in notes, "NOTES.txt lacks the check command"
    for action in IAM_ACTIONS:
        assert action in notes, f"NOTES.txt lacks {action}"


def flatten(values: dict, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in values.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten(value, path + "."))
        else:
            out[path] = value
    return out


def type_name(value: Any) -> str:
    return {bool: "bool", int: "int", float: "float", str: "string", list: "list", dict: "object"}.get(type(value), "null")


def t_readme_table() -> None:
    values = yaml.safe_load((CHART_DIR / "values.yaml").read_text())
    want = flatten(values)
    rows: dict[str, tuple[str, str]] = {}
    for line in (CHART_DIR / "README.md").read_text().splitlines():
        m = re.match(r"^\|\s*([A-Za-z0-9_.]+)\s*\|\s*(\w+)\s*\|\s*`([^`]*)`\s*\|", line)
        if m:
            assert m.group(1) not in rows, f"README lists {m.group(1)} twice"
            rows[m.group(1)] = (m.group(2), m.group(3))
    missing, extra = sorted(set(want) - set(rows)), sorted(set(rows) - set(want))
    assert not missing and not extra, f"README values table: missing {missing}, extra {extra}"
    for key, value in want.items():
        typ, default = rows[key]
        assert typ == type_name(value), f"README {key}: type {typ}, values.yaml has {type_name(value)}"
        assert json.loads(default) == value, f"README {key}: default {default}, values.yaml has {json.dumps(value)}"


# --------------------------------------------------------------- examples


def t_example_objects() -> None:
    """Every Kubernetes object under examples/ validates."""
    count = 0
    for path in sorted(EXAMPLES.rglob("*")):
        if path.suffix not in (".yaml", ".yml", ".json"):
            continue
        docs = [json.loads(path.read_text())] if path.suffix == ".json" else load_yaml(path)
        for doc in docs:
            if isinstance(doc, dict) and "apiVersion" in doc and "kind" in doc:
                validate_k8s(doc, f"{path.relative_to(ROOT)} {doc['kind']}")
                count += 1
    print(f"     ({count} Kubernetes objects found under examples/)")


def t_argo_values_render(name: str, versions: list[str] = K8S_VERSIONS) -> Callable[[], None]:
    def run() -> None:
        server = argo_values(name)
        deployment = build_argo_deployment(server)
        validate_k8s(deployment, f"{name} as argo-server Deployment", versions)
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "argo-workflows-server-0", "namespace": NAMESPACE},
               "spec": deployment["spec"]["template"]["spec"]}
        validate_k8s(pod, f"{name} as argo-server Pod", versions)
        spec = pod["spec"]
        volumes = {v["name"] for v in spec["volumes"]}
        for c in spec.get("initContainers", []) + spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in volumes, f"{c['name']} mounts unknown volume {m['name']}"
    return run


def t_argo_init_install() -> None:
    server = argo_values("values.yaml")
    inits = server.get("extraInitContainers", [])
    assert "{{" not in yaml.safe_dump(inits), "extraInitContainers contain '{{' (argo-helm runs them through tpl)"
    installers = [c for c in inits if (c.get("command") or [])[1:2] == ["install"]]
    assert len(installers) == 1, "expected one init container running `drainwait install DIR`"
    init = installers[0]
    assert init["command"][0] == "/drainwait" and len(init["command"]) == 3, init["command"]
    install_dir = init["command"][2]
    vol = next(m["name"] for m in init["volumeMounts"] if m["mountPath"] == install_dir)
    volume = next(v for v in server["volumes"] if v["name"] == vol)
    assert "emptyDir" in volume, f"{vol} is not an emptyDir"
    mounts = [m for m in server["volumeMounts"] if m["name"] == vol]
    assert len(mounts) == 1, f"argo-server does not mount {vol}"
    assert mounts[0].get("readOnly") is True, f"{vol} must be readOnly in argo-server"
    cmd = prestop_command(server)
    assert cmd[0] == mounts[0]["mountPath"].rstrip("/") + "/drainwait", f"preStop runs {cmd[0]}, binary is at {mounts[0]['mountPath']}/drainwait"
    assert install_dir.rstrip("/") == mounts[0]["mountPath"].rstrip("/"), "install dir and argo-server mount differ"
    assert cmd == [install_dir.rstrip("/") + "/drainwait"], f"preStop command {cmd} != [install dir + /drainwait]"


def t_argo_baked_image() -> None:
    server = argo_values("values-baked-image.yaml")
    text = (ARGO / "Dockerfile").read_text()
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert not [l for l in lines if l.upper().startswith("RUN")], "examples Dockerfile has RUN (argocli is distroless)"
    copies = [l.split() for l in lines if l.upper().startswith("COPY") and "--from=drainwait" in l]
    assert len(copies) == 1, "expected one COPY --from=drainwait"
    dest = copies[0][-1]
    assert prestop_command(server) == [dest], f"preStop {prestop_command(server)} != COPY destination {dest}"
    shadow = [m for m in server.get("volumeMounts", []) if dest.startswith(m["mountPath"].rstrip("/") + "/")]
    assert not shadow, f"a volume mounted at {shadow[0]['mountPath']} would hide {dest}"
    argocli = [l for l in lines if l.upper().startswith("FROM") and "argocli:" in l]
    assert argocli and argocli[-1].split()[-1] == ARGO_SERVER_IMAGE, f"examples Dockerfile base is not {ARGO_SERVER_IMAGE}"


def t_argo_env_and_timing(name: str) -> Callable[[], None]:
    def run() -> None:
        server = argo_values(name)
        env = drainwait_env(server, name)
        check_identity_env(env, name)
        check_timing(server, env, name)
        for e in env:
            if e["name"].startswith("DRAINWAIT_") and e["name"].endswith(("_WAIT", "_SETTLE", "_RESERVE", "_INTERVAL")):
                seconds(e["value"])
    return run


def t_argo_sidecar(name: str) -> Callable[[], None]:
    def run() -> None:
        server = argo_values(name)
        key = SIDECAR_FILES[name]
        sidecar = sidecar_of(server, name)
        what = f"{name} server.{key}[{sidecar.get('name')}]"
        assert sidecar.get("command") == ["/drainwait", "serve"], f"{what}: command {sidecar.get('command')}, want ['/drainwait', 'serve']"
        assert not sidecar.get("args"), f"{what}: args {sidecar['args']} (e.g. --listen) would bypass these checks"
        assert "{{" not in yaml.safe_dump(server.get(key)), f"{what}: contains '{{{{' (argo-helm runs extraInitContainers through tpl)"
        port = listen_port(sidecar.get("env", []), what)
        declared = [p.get("containerPort") for p in sidecar.get("ports", [])]
        assert port in declared, f"{what}: serves on {port}, declares containerPort {declared}"
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = (sidecar.get(probe) or {}).get("httpGet")
            if get:
                got = resolve_port(get.get("port"), sidecar, f"{what} {probe}")
                assert got == port, f"{what}: {probe} port {got} != serve port {port}"
        if key == "extraInitContainers":
            assert sidecar.get("restartPolicy") == "Always", f"{what}: restartPolicy {sidecar.get('restartPolicy')!r}, want 'Always' (native sidecar)"
        else:
            assert "restartPolicy" not in sidecar, f"{what}: restartPolicy on a plain container"
            # SIGTERM reaches it while argo-server's hook runs: its own hook joins the drain.
            check_drain_hook(sidecar, port, f"{what} (own preStop)")
        # argo-server as the chart renders it, so a named port resolves as kubelet does.
        main = build_argo_deployment(server)["spec"]["template"]["spec"]["containers"][0]
        check_drain_hook(main, port, f"{name} argo-server (server.lifecycle)")
    return run


def t_iam_policy() -> None:
    policy = json.loads((ARGO / "iam-policy.json").read_text())
    assert policy.get("Version") == "2012-10-17", "IAM policy Version"
    statements = policy["Statement"]
    actions: set[str] = set()
    for st in statements:
        assert st["Effect"] == "Allow" and st["Resource"] == "*", st
        acts = st["Action"] if isinstance(st["Action"], list) else [st["Action"]]
        actions.update(acts)
    assert actions == IAM_ACTIONS, f"IAM actions {sorted(actions)} != {sorted(IAM_ACTIONS)}"


def main() -> int:
    check("helm lint --strict", t_lint)
    for label, values in SCENARIOS.items():
        check(f"render [{label}]: manifests valid for Kubernetes {', '.join(K8S_VERSIONS)}", t_scenario_valid(values))
    check("Role rules == SPEC least privilege (aws.enabled=true)", t_rules_default)
    check("Role rules == SPEC without targetgroupbindings (aws.enabled=false)", t_rules_no_aws)
    check("RoleBinding binds argo-workflows-server in the release namespace", t_binding)
    check("RoleBinding honours serviceAccount.name/namespace", t_binding_other_namespace)
    check("serviceAccount.create=true renders the ServiceAccount with annotations", t_serviceaccount_create)
    check("values.schema.json rejects unknown keys and bad names", t_schema_rejects)
    check("NOTES.txt gives the check command and IAM actions", t_notes)
    check("chart README values table == values.yaml", t_readme_table)
    check("Kubernetes objects under examples/ validate", t_example_objects)
    for name in ("values.yaml", "values-baked-image.yaml", *SIDECAR_FILES):
        versions = NATIVE_SIDECAR_VERSIONS if SIDECAR_FILES.get(name) == "extraInitContainers" else K8S_VERSIONS
        check(f"examples/argo-workflows/{name} in argo-helm's Deployment/Pod shape validates for Kubernetes {', '.join(versions)}",
              t_argo_values_render(name, versions))
        check(f"examples/argo-workflows/{name}: POD_NAME/POD_NAMESPACE, grace and MAX_WAIT consistent", t_argo_env_and_timing(name))
    check("values.yaml: preStop path == init container install dir + /drainwait", t_argo_init_install)
    check("values-baked-image.yaml: preStop path == Dockerfile COPY destination", t_argo_baked_image)
    check("values-sidecar.yaml: native sidecar (extraInitContainers, restartPolicy Always) runs `drainwait serve`; "
          "argo-server's preStop httpGet /drain on its port, pod IP", t_argo_sidecar("values-sidecar.yaml"))
    check("values-sidecar-plain.yaml: plain sidecar (extraContainers) runs `drainwait serve` with its own preStop /drain; "
          "argo-server's preStop httpGet /drain on its port, pod IP", t_argo_sidecar("values-sidecar-plain.yaml"))
    check("iam-policy.json grants exactly the two Describe actions", t_iam_policy)

    print(f"chart-tests: {passed} passed, {len(failures)} failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
