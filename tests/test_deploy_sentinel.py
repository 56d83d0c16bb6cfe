"""The Kubernetes Sentinel variant (deploy/kubernetes/redis-sentinel), validated like the
others: its manifests by tests/test_deploy.py (kubernetes-validate, listed by its
kustomization); here, the config it gives mcplb passes ``mcplb check``, differs from the
edge ConfigMap's only in sticky.redis, and names the StatefulSet's pods, port and
master name as the sentinels are configured."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import yaml

from mcplb.proxy.config.loader import parse_config
from tests.test_deploy import KUBERNETES, TOOLS, configmap_config, resources

COMPONENT = KUBERNETES / "redis-sentinel"


def component() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    return loaded


def patched_config() -> str:
    """The config text the component puts in the edge ConfigMap."""
    (patch,) = [p for p in component()["patches"] if p["target"]["kind"] == "ConfigMap"]
    (operation,) = yaml.safe_load(patch["patch"])
    assert (operation["op"], operation["path"]) == ("replace", "/data/config.yaml")
    text: str = operation["value"]
    return text


def component_env() -> dict[str, str]:
    (patch,) = [p for p in component()["patches"] if p["target"]["kind"] == "Deployment"]
    env = {}
    for operation in yaml.safe_load(patch["patch"]):
        assert operation["path"] == "/spec/template/spec/containers/0/env/-"
        env[operation["value"]["name"]] = operation["value"]["value"]
    return env


def edge() -> tuple[str, dict[str, str]]:
    objects = resources(KUBERNETES / "edge")
    return configmap_config(objects, objects["Deployment", "mcplb"])


def test_the_config_differs_from_the_edge_one_only_in_sticky_redis() -> None:
    edge_text, _ = edge()
    ours = yaml.safe_load(patched_config())
    theirs = yaml.safe_load(edge_text)
    assert set(ours["sticky"]["redis"]) == {"sentinels", "service"}
    ours["sticky"].pop("redis")
    theirs["sticky"].pop("redis")
    assert ours == theirs
    # Comments too, but for the redis section.
    strip = re.compile(r"^  redis:.*?\n(?=\n)", re.S | re.M)
    assert strip.sub("", patched_config()).rstrip() == strip.sub("", edge_text).rstrip()


def test_the_config_passes_mcplb_check(tmp_path: Path) -> None:
    _, env = edge()
    env.update(component_env())
    path = tmp_path / "config.yaml"
    path.write_text(patched_config())
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MCPLB_")}
    out = subprocess.run(
        [str(TOOLS / "mcplb"), "check", "--config", str(path)],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    config = parse_config(patched_config(), environ=env)
    assert config.sticky.store == "redis"
    assert config.sticky.redis.url == "redis://127.0.0.1:6379/0"  # the default, not read


def test_the_config_names_the_statefulset_and_its_master() -> None:
    objects = resources(COMPONENT)
    statefulset = objects["StatefulSet", "mcplb-redis"]
    spec = statefulset["spec"]
    headless = objects["Service", spec["serviceName"]]
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["publishNotReadyAddresses"] is True
    containers = {c["name"]: c for c in spec["template"]["spec"]["containers"]}
    (port,) = [p["containerPort"] for p in containers["sentinel"]["ports"]]
    script = containers["sentinel"]["args"][0]
    monitor = re.search(r"sentinel monitor (\S+) \$master 6379 (\d+)", script)
    assert monitor is not None
    name, quorum = monitor.group(1), int(monitor.group(2))
    assert quorum == spec["replicas"] // 2 + 1  # a majority of the sentinels
    _, env = edge()
    env.update(component_env())
    redis = parse_config(patched_config(), environ=env).sticky.redis
    assert redis.service == name
    pods = [f"mcplb-redis-{n}.{spec['serviceName']}" for n in range(spec["replicas"])]
    assert redis.sentinels == tuple((pod, port) for pod in pods)
    # The pods find the current master through the sentinel Service, under the same name.
    assert f"-h {objects['Service', 'mcplb-redis-sentinel']['metadata']['name']} " in script
    assert f"get-master-addr-by-name {name}" in script
    pdb = objects["PodDisruptionBudget", "mcplb-redis"]
    assert pdb["spec"]["minAvailable"] == quorum
    selector = spec["selector"]["matchLabels"]
    for service in ("mcplb-redis-headless", "mcplb-redis-sentinel"):
        assert objects["Service", service]["spec"]["selector"] == selector
    assert pdb["spec"]["selector"]["matchLabels"] == selector


def test_the_edge_names_the_component() -> None:
    assert "#   - ../redis-sentinel" in (KUBERNETES / "edge" / "kustomization.yaml").read_text()
