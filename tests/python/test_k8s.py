"""Offline validation of k8s/ (no cluster can be reached from the test machines): every overlay
renders with `kubectl kustomize`, the output passes `kubernetes-validate --strict` against a
current Kubernetes version, `checkov` finds nothing beyond the checks k8s/.checkov.yaml skips
with a reason, `hadolint` passes every Dockerfile, the ConfigMap's capfilt.toml is accepted by
capfilt's own config loader, a deliberately broken copy fails, and the properties the README
promises (worker grace period > drain timeout, coordinator Recreate with 1 replica, exact RBAC)
hold. Also: a coordinator told to run the trainer on Kubernetes without credentials refuses;
every long-running pod is probed over its HTTP port; k8s/monitoring (PodMonitor, Grafana
dashboard) renders and the dashboard only queries metrics capfilt exports.
"""
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = os.environ.get("CAPFILT_BIN", str(REPO / "target" / "debug" / "capfilt"))
K8S = REPO / "k8s"
TOOLS = REPO / ".venv-k8s" / "bin"
OVERLAYS = ["cpu", "gpu", "dev"]
KUBERNETES_VERSION = "1.35.0"


def tool(name: str) -> str:
    path = TOOLS / name
    assert path.exists(), f"{path} missing: run scripts/setup.sh"
    return str(path)


def kustomize(path: Path) -> str:
    assert shutil.which("kubectl"), "kubectl missing: run scripts/setup.sh"
    r = subprocess.run(["kubectl", "kustomize", str(path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


def validate(rendered: str, tmp: Path) -> subprocess.CompletedProcess:
    f = tmp / "rendered.yaml"
    f.write_text(rendered)
    return subprocess.run([tool("kubernetes-validate"), "--strict", "--quiet", "-k", KUBERNETES_VERSION, str(f)],
                          capture_output=True, text=True)


def objects(rendered: str) -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in yaml.safe_load_all(rendered) if d}


@pytest.fixture(scope="module")
def rendered() -> dict[str, str]:
    return {o: kustomize(K8S / "overlays" / o) for o in OVERLAYS}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_overlay_renders_and_passes_strict_schema_validation(rendered, overlay, tmp_path) -> None:
    r = validate(rendered[overlay], tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    kinds = {k for k, _ in objects(rendered[overlay])}
    assert {"Deployment", "Service", "ConfigMap", "ServiceAccount", "Role", "RoleBinding",
            "PodDisruptionBudget", "PodTemplate", "NetworkPolicy", "Namespace"} <= kinds


def test_a_broken_manifest_fails_validation(tmp_path) -> None:
    broken = tmp_path / "k8s"
    shutil.copytree(K8S, broken)
    worker = broken / "base" / "worker.yaml"
    # A typo in a field name: strict validation rejects the unknown property.
    worker.write_text(worker.read_text().replace("terminationGracePeriodSeconds:", "terminationGracePeriodSecond:"))
    r = validate(kustomize(broken / "overlays" / "cpu"), tmp_path)
    assert r.returncode != 0
    assert "terminationGracePeriodSecond" in r.stdout + r.stderr


def test_checkov_finds_nothing_unexplained() -> None:
    r = subprocess.run([tool("checkov"), "--config-file", str(K8S / ".checkov.yaml"), "-d", str(K8S), "--skip-download"],
                       capture_output=True, text=True, cwd=K8S)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "Failed checks: 0" in r.stdout, r.stdout[-4000:]
    # Every skipped check is explained in the README too.
    skipped = yaml.safe_load((K8S / ".checkov.yaml").read_text())["skip-check"]
    readme = (K8S / "README.md").read_text()
    assert all(check in readme for check in skipped), [c for c in skipped if c not in readme]


@pytest.mark.parametrize("dockerfile", sorted(p.name for p in (K8S / "images").glob("*.Dockerfile")))
def test_hadolint_passes_every_dockerfile(dockerfile) -> None:
    r = subprocess.run([tool("hadolint"), str(K8S / "images" / dockerfile)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    text = (K8S / "images" / dockerfile).read_text()
    assert "USER 10001" in text, "runs as a non-root user"
    assert text.count("FROM ") >= 2, "multi-stage"
    assert ":latest" not in text


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_configmap_config_is_accepted_by_capfilt(rendered, overlay, tmp_path) -> None:
    cm = next(d for (k, n), d in objects(rendered[overlay]).items() if k == "ConfigMap" and n.startswith("capfilt-config"))
    f = tmp_path / "capfilt.toml"
    f.write_text(cm["data"]["capfilt.toml"])
    r = subprocess.run([BIN, "doctor", "--config", str(f)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert f"config {f}: ok" in r.stdout
    store = tomllib.loads(cm["data"]["capfilt.toml"]).get("store", {})
    assert not [k for k in store if any(w in k for w in ("secret", "access_key", "password", "token"))], store
    assert "aws_secret_access_key" not in cm["data"]["capfilt.toml"].lower(), "no credentials in the ConfigMap"


def test_capfilt_refuses_a_config_the_manifests_would_break() -> None:
    bad = tomllib.loads((K8S / "base" / "capfilt.toml").read_text())
    assert bad["trainer"]["runner"] == "kubernetes"
    r = subprocess.run([BIN, "doctor", "--config", "/dev/null/missing.toml"], capture_output=True, text=True)
    assert r.returncode == 2 and "cannot read the config file" in r.stderr


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_what_the_readme_promises_holds(rendered, overlay) -> None:
    objs = objects(rendered[overlay])
    cm = next(d for (k, n), d in objs.items() if k == "ConfigMap" and n.startswith("capfilt-config"))
    config = tomllib.loads(cm["data"]["capfilt.toml"])
    coordinator = objs[("Deployment", "capfilt-coordinator")]
    assert coordinator["spec"]["replicas"] == 1 and coordinator["spec"]["strategy"]["type"] == "Recreate"
    worker = objs[("Deployment", "capfilt-worker")]["spec"]["template"]["spec"]
    assert worker["terminationGracePeriodSeconds"] > config["worker"]["drain_timeout_s"]
    role = objs[("Role", "capfilt-coordinator")]
    rules = {(g, r): sorted(rule["verbs"]) for rule in role["rules"] for g in rule["apiGroups"] for r in rule["resources"]}
    assert rules == {
        ("batch", "jobs"): sorted(["create", "get", "list", "watch", "delete"]),
        ("", "pods"): ["get", "list"],
        ("", "pods/log"): ["get"],
        ("", "podtemplates"): ["get"],
    }
    binding = objs[("RoleBinding", "capfilt-coordinator")]
    assert binding["subjects"][0]["name"] == coordinator["spec"]["template"]["spec"]["serviceAccountName"]
    pod_specs = [d["spec"]["template"]["spec"] for (k, _), d in objs.items() if k in ("Deployment", "Job")]
    pod_specs.append(objs[("PodTemplate", "capfilt-trainer")]["template"]["spec"])
    for spec in pod_specs:
        assert spec["securityContext"]["runAsNonRoot"] is True
        for c in spec["containers"]:
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, c["name"]
            assert "resources" in c and c["resources"].get("limits"), c["name"]
            for e in c.get("env", []):
                assert "KEY" not in e["name"] or "valueFrom" in e, "credentials only from a Secret"
    if overlay == "gpu":
        w = worker["containers"][0]
        assert w["resources"]["limits"]["nvidia.com/gpu"] == "1" and "cuda:0" in w["args"]
        assert worker["tolerations"] and worker["nodeSelector"]
        trainer = objs[("PodTemplate", "capfilt-trainer")]["template"]["spec"]
        assert trainer["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"
    # Images are set in one place (kustomize images:): no bare image names survive.
    images = [c["image"] for s in pod_specs for c in s["containers"]]
    assert all("/" in i and ":" in i for i in images), images


def test_a_kubernetes_trainer_without_credentials_refuses_to_start(tmp_path) -> None:
    # The cluster's gRPC credentials, laid out as the Secrets mount them.
    certs, tls, auth = tmp_path / "certs", tmp_path / "tls", tmp_path / "auth"
    subprocess.run(["bash", str(K8S / "make-grpc-secrets.sh"), "--out", str(certs)], check=True,
                   capture_output=True)
    tls.mkdir()
    auth.mkdir()
    for src, dst in [("coordinator.crt", tls / "tls.crt"), ("coordinator.key", tls / "tls.key"),
                     ("ca.crt", tls / "ca.crt"), ("token", auth / "token")]:
        dst.write_bytes((certs / src).read_bytes())
    config = tmp_path / "capfilt.toml"
    text = (K8S / "base" / "capfilt.toml").read_text()
    config.write_text(text.replace("/etc/capfilt-tls", str(tls)).replace("/etc/capfilt-auth", str(auth)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBERNETES_")}
    env.update(HOME=str(tmp_path), KUBECONFIG=str(tmp_path / "no-kubeconfig"))
    r = subprocess.run([BIN, "coordinator", "--config", str(config), "--listen", "127.0.0.1:0"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert r.returncode == 2, r.stderr
    assert "needs cluster credentials" in r.stderr, r.stderr


# Every metric capfilt exports (coordinator/src/metrics.rs, worker/src/metrics.rs).
METRICS = {
    "capfilt_coordinator_shards", "capfilt_coordinator_leases_granted_total",
    "capfilt_coordinator_leases_expired_total", "capfilt_coordinator_leases_released_total",
    "capfilt_coordinator_lease_failures_total", "capfilt_coordinator_shards_committed_total",
    "capfilt_coordinator_shards_quarantined_total", "capfilt_coordinator_rows_committed_total",
    "capfilt_coordinator_texts_total", "capfilt_coordinator_texts_kept_total",
    "capfilt_coordinator_rejects_total", "capfilt_coordinator_workers", "capfilt_coordinator_round",
    "capfilt_coordinator_run_phase", "capfilt_coordinator_round_rows",
    "capfilt_coordinator_rpc_duration_seconds", "capfilt_coordinator_ready",
    "capfilt_coordinator_workers_excluded_total",
    "capfilt_worker_images_processed_total", "capfilt_worker_rows_committed_total", "capfilt_worker_texts_total",
    "capfilt_worker_texts_kept_total", "capfilt_worker_rejects_total", "capfilt_worker_shards_total",
    "capfilt_worker_stage_seconds", "capfilt_worker_batch_images", "capfilt_worker_batch_chunks",
    "capfilt_worker_decode_queue_depth",
    "capfilt_worker_engine_loads_total", "capfilt_worker_active_leases", "capfilt_worker_info",
    "capfilt_worker_gpu_memory_used_bytes", "capfilt_worker_gpu_memory_total_bytes",
}


def test_the_metric_list_matches_the_code() -> None:
    code = (REPO / "coordinator/src/metrics.rs").read_text() + (REPO / "worker/src/metrics.rs").read_text()
    exported = set(re.findall(r'pub const [A-Z_]+: &str = "(capfilt_[a-z_]+)";', code))
    assert exported == METRICS


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_long_running_pods_are_probed_over_http(rendered, overlay) -> None:
    objs = objects(rendered[overlay])
    cm = next(d for (k, n), d in objs.items() if k == "ConfigMap" and n.startswith("capfilt-config"))
    config = tomllib.loads(cm["data"]["capfilt.toml"])
    # Every Deployment's containers (MinIO in dev too) have liveness and readiness probes.
    for (kind, name), d in objs.items():
        if kind == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                assert "livenessProbe" in c and "readinessProbe" in c, (name, c["name"])
    policies = [d for (k, _), d in objs.items() if k == "NetworkPolicy"]
    for name, table in [("capfilt-coordinator", "coordinator"), ("capfilt-worker", "worker")]:
        pod = objs[("Deployment", name)]["spec"]["template"]
        for c in pod["spec"]["containers"]:
            http = next(p for p in c["ports"] if p["name"] == "http")
            assert config[table]["metrics_listen"] == f"0.0.0.0:{http['containerPort']}", table
            assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}, name
            assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}, name
            # Some NetworkPolicy that selects the pod lets the http port in (for scraping).
            selecting = [np for np in policies
                         if np["spec"]["podSelector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()]
            assert selecting, name
            open_ports = {p["port"] for np in selecting for rule in np["spec"].get("ingress", [])
                          for p in rule.get("ports", [])}
            assert http["containerPort"] in open_ports, (name, open_ports)
    service = objs[("Service", "capfilt-coordinator")]
    assert {p["name"] for p in service["spec"]["ports"]} == {"grpc", "http"}
    # Workers reach the coordinator whatever /readyz says (planning, training, after a restart).
    assert service["spec"]["publishNotReadyAddresses"] is True


def test_monitoring_renders_and_the_dashboard_queries_only_capfilt_metrics() -> None:
    objs = objects(kustomize(K8S / "monitoring"))
    pm = objs[("PodMonitor", "capfilt")]
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    assert pm["metadata"]["namespace"] == "capfilt"
    assert [e["port"] for e in pm["spec"]["podMetricsEndpoints"]] == ["http"]
    assert pm["spec"]["podMetricsEndpoints"][0]["path"] == "/metrics"
    assert pm["spec"]["podMetricsEndpoints"][0]["interval"] == "15s"
    selector = pm["spec"]["selector"]["matchExpressions"][0]
    assert selector["key"] == "app.kubernetes.io/name" and selector["operator"] == "In"
    assert set(selector["values"]) == {"capfilt-coordinator", "capfilt-worker"}
    # The selected pods carry that label and name a container port http in every overlay.
    for overlay in OVERLAYS:
        deployments = {n: d for (k, n), d in objects(kustomize(K8S / "overlays" / overlay)).items() if k == "Deployment"}
        for name in selector["values"]:
            pod = deployments[name]["spec"]["template"]
            assert pod["metadata"]["labels"][selector["key"]] == name, (overlay, name)
            assert any(p["name"] == "http" for c in pod["spec"]["containers"] for p in c["ports"]), (overlay, name)
    cm = objs[("ConfigMap", "capfilt-grafana-dashboard")]
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    dash = json.loads(cm["data"]["capfilt-dashboard.json"])
    assert dash["schemaVersion"] >= 36 and dash["panels"]
    # The data source is a variable (the sidecar) and an import input (Dashboards -> Import).
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource" and variables["DS_PROMETHEUS"]["query"] == "prometheus"
    assert [i["name"] for i in dash["__inputs"]] == ["DS_PROMETHEUS"]
    assert len({p["id"] for p in dash["panels"]}) == len(dash["panels"])
    used = set()
    for panel in dash["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
        for t in panel["targets"]:
            assert t["expr"].strip() and t["refId"], panel["title"]
            for name in re.findall(r"capfilt_[a-z_]+", t["expr"]):
                used.add(re.sub(r"_(bucket|sum|count)$", "", name))
    assert used <= METRICS, used - METRICS
    # The dashboard covers both roles and the latency histograms.
    assert {"capfilt_coordinator_shards", "capfilt_coordinator_rpc_duration_seconds",
            "capfilt_worker_stage_seconds", "capfilt_worker_images_processed_total"} <= used


def test_the_grpc_port_is_mutual_tls_with_a_token_and_workers_are_fenced_to_the_bucket(rendered) -> None:
    config = tomllib.loads((K8S / "base" / "capfilt.toml").read_text())
    assert config["coordinator"]["tls"]["client_ca"] and config["auth"]["token_file"]
    assert config["worker"]["tls"]["ca"] and config["worker"]["allowed_prefixes"] == ["s3://capfilt/"]
    for overlay in OVERLAYS:
        objs = objects(rendered[overlay])
        for name, secret in [("capfilt-coordinator", "capfilt-grpc-tls"), ("capfilt-worker", "capfilt-grpc-ca")]:
            pod = objs[("Deployment", name)]["spec"]["template"]["spec"]
            secrets = {v["secret"]["secretName"]: v["name"] for v in pod["volumes"] if "secret" in v}
            assert secret in secrets and "capfilt-auth" in secrets, (overlay, name)
            mounts = {m["name"]: m["mountPath"] for m in pod["containers"][0]["volumeMounts"]}
            # Every file the config names lies under a mounted Secret.
            files = [config["auth"]["token_file"]] + list(
                (config["coordinator"]["tls"] if name == "capfilt-coordinator" else config["worker"]["tls"]).values())
            for f in files:
                if f.startswith("/"):
                    assert any(f.startswith(mounts[v] + "/") for v in secrets.values()), (name, f)
        worker = objs[("Deployment", "capfilt-worker")]["spec"]["template"]["spec"]["containers"][0]
        url = next(e["value"] for e in worker["env"] if e["name"] == "CAPFILT_COORDINATOR")
        assert url.startswith("https://capfilt-coordinator:"), url
