"""docs/scale-out.md and deploy/: the Kubernetes manifest is valid and exposes port 7860 only, the front's command
line in it is one app.py accepts, and the doc names only flags that exist, every scale-out flag, and files that
exist."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
import yaml

from webui.cli import build_parser, parse_scale_out, parse_settings
from webui.scaleout.config import APP_NAME, DEFAULT_REPLICA_CACHE

REPO_ROOT = Path(__file__).resolve().parent.parent
DOC = REPO_ROOT / "docs" / "scale-out.md"
MANIFESTS = [REPO_ROOT / "deploy" / "raycluster.yaml", REPO_ROOT / "deploy" / "rayservice.yaml"]
RAY_FLAG = re.compile(r"--ray-[a-z][a-z-]*[a-z]")


@pytest.fixture(scope="module", params=MANIFESTS, ids=lambda path: path.name)
def manifest(request) -> dict[str, dict]:
    """The manifest's documents by kind; a RayService's cluster is also under "RayCluster" (its
    rayClusterConfig), so both files meet the same checks."""
    documents = list(yaml.safe_load_all(request.param.read_text()))
    kinds = [document["kind"] for document in documents]
    assert len(set(kinds)) == len(kinds)
    by_kind = {document["kind"]: document for document in documents}
    if "RayService" in by_kind:
        service = by_kind["RayService"]
        by_kind["RayCluster"] = {"apiVersion": service["apiVersion"], "metadata": service["metadata"],
                                 "spec": service["spec"]["rayClusterConfig"]}
    return by_kind


def ray_pip_version() -> str:
    pins = [line for line in (REPO_ROOT / "requirements-ray.txt").read_text().splitlines()
            if line.strip() and not line.startswith("#")]
    assert len(pins) == 1 and pins[0].startswith("ray[serve]==")
    return pins[0].split("==")[1]


def scale_out_flags() -> set[str]:
    return {option for action in build_parser()._actions for option in action.option_strings
            if option.startswith("--ray-")}


def head_container(cluster: dict) -> dict:
    (container,) = cluster["spec"]["headGroupSpec"]["template"]["spec"]["containers"]
    return container


def pod_specs(cluster: dict) -> list[dict]:
    return [cluster["spec"]["headGroupSpec"]["template"]["spec"],
            *(group["template"]["spec"] for group in cluster["spec"]["workerGroupSpecs"])]


def test_manifest_kinds_and_api_versions(manifest):
    expected = {"RayCluster": "ray.io/v1", "PersistentVolumeClaim": "v1", "Service": "v1",
                "NetworkPolicy": "networking.k8s.io/v1"}
    if "RayService" in manifest:
        expected["RayService"] = "ray.io/v1"
    assert {kind: document["apiVersion"] for kind, document in manifest.items()} == expected
    assert manifest["RayCluster"]["spec"]["rayVersion"] == ray_pip_version()


def test_only_port_7860_is_exposed(manifest):
    service = manifest["Service"]
    assert [(port["port"], port["targetPort"]) for port in service["spec"]["ports"]] == [(7860, 7860)]
    assert service["spec"]["selector"] == head_container_labels(manifest)
    assert [port["containerPort"] for port in head_container(manifest["RayCluster"])["ports"]] == [7860]
    # Pods outside the cluster reach 7860 and nothing else; Ray's ports only from the studio's own pods.
    rules = manifest["NetworkPolicy"]["spec"]["ingress"]
    open_rules = [rule for rule in rules if "from" not in rule]
    assert [[port["port"] for port in rule["ports"]] for rule in open_rules] == [[7860]]
    assert all(rule["from"] == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "stable-studio"}}}]
               for rule in rules if "from" in rule)


def head_container_labels(manifest: dict) -> dict:
    return manifest["RayCluster"]["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]


def test_the_front_in_the_head_pod_runs_with_flags_app_py_accepts(manifest):
    container = head_container(manifest["RayCluster"])
    script = " ".join(container["args"])
    command = shlex.split(script[script.index("python app.py"):])[2:]
    parser = build_parser()
    args = parser.parse_args(command)
    config = parse_scale_out(args, parser)
    assert config is not None and config.address == "auto"
    assert args.listen and args.port == 7860 and str(args.data_dir) == "/data"
    assert args.gradio_auth_path and args.api_auth_file  # --listen without logins would refuse to start
    # KubeRay's generated `ray start` runs first (the annotation hands the command to us).
    assert manifest["RayCluster"]["metadata"]["annotations"]["ray.io/overwrite-container-cmd"] == "true"
    assert script.index("$KUBERAY_GEN_RAY_START_CMD &") < script.index("python app.py")


def test_the_rayservice_deploys_the_replicas_the_attached_front_expects():
    documents = {d["kind"]: d for d in yaml.safe_load_all(MANIFESTS[1].read_text())}
    service = documents["RayService"]["spec"]
    serve_config = yaml.safe_load(service["serveConfigV2"])
    (application,) = serve_config["applications"]
    assert application["name"] == APP_NAME and application["route_prefix"] is None  # no HTTP route of ours
    module, _, name = application["import_path"].partition(":")
    assert callable(getattr(importlib.import_module(module), name))
    script = " ".join(head_container({"spec": service["rayClusterConfig"]})["args"])
    front = shlex.split(script[script.index("python app.py"):])[2:]
    assert "--ray-attach" in front
    # The replicas are built from the front's own flags, minus attaching and the front's logins and host names.
    dropped = {"--ray-attach"}
    kept, skip = [], False
    for flag in front:
        if skip:
            skip = False
        elif flag in ("--gradio-auth-path", "--api-auth-file", "--allowed-hosts"):
            skip = True
        elif flag not in dropped:
            kept.append(flag)
    assert application["args"]["flags"] == kept
    settings = parse_settings(kept)
    assert settings.scale_out is not None and not settings.scale_out.attach


def test_gpu_workers_and_one_shared_data_volume_at_the_same_path(manifest):
    cluster = manifest["RayCluster"]
    (group,) = cluster["spec"]["workerGroupSpecs"]
    (worker,) = group["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert 1 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    claim = manifest["PersistentVolumeClaim"]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for spec in pod_specs(cluster):
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        (container,) = spec["containers"]
        mounts = [mount for mount in container["volumeMounts"]
                  if volumes[mount["name"]].get("persistentVolumeClaim", {}).get("claimName")
                  == claim["metadata"]["name"]]
        assert [mount["mountPath"] for mount in mounts] == ["/data"]
        env = {item["name"]: item for item in container["env"]}
        assert env["RAY_AUTH_MODE"]["value"] == "token" and "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"]
        assert container["image"] == head_container(cluster)["image"]  # same code and pins on every node


def test_dockerfile_installs_every_requirements_file_and_the_code():
    dockerfile = (REPO_ROOT / "deploy" / "Dockerfile").read_text()
    for name in ("requirements.txt", "requirements-ray.txt", "requirements-nodeps.txt"):
        assert (REPO_ROOT / name).is_file()
        assert f"-r {name}" in dockerfile
    assert "--no-deps -r requirements-nodeps.txt" in dockerfile
    for copied in re.findall(r"^COPY (.+?) \S+$", dockerfile, re.MULTILINE):
        for path in copied.split():
            assert (REPO_ROOT / path).exists(), path


def test_doc_names_only_existing_flags_and_all_of_them():
    text = DOC.read_text()
    mentioned = set(RAY_FLAG.findall(text))
    assert mentioned <= scale_out_flags(), mentioned - scale_out_flags()
    assert scale_out_flags() <= mentioned, scale_out_flags() - mentioned
    assert "requirements-ray.txt" in text and f"`{DEFAULT_REPLICA_CACHE}`" in text


def test_readme_names_the_flags_the_doc_and_the_requirements_file():
    readme = (REPO_ROOT / "README.md").read_text()
    assert "(docs/scale-out.md)" in readme and "requirements-ray.txt" in readme
    assert scale_out_flags() <= set(RAY_FLAG.findall(readme))
    assert set(RAY_FLAG.findall(readme)) <= scale_out_flags()


@pytest.mark.parametrize("document", [DOC, REPO_ROOT / "README.md"])
def test_links_resolve_to_files_in_the_repo(document):
    links = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", document.read_text())
             if not re.match(r"[a-z]+:", target) and not target.startswith("#")]
    assert links
    for target in links:
        assert (document.parent / target).resolve().exists(), target
