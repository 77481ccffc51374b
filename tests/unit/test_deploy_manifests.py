"""deploy/kubernetes/: valid Kubernetes objects, and arguments the commands really take.

Validated against the Kubernetes object schemas (kubernetes-validate, strict: an unknown field
is an error); no cluster runs here. The containers' arguments are parsed by flowtrail's own
command-line parser, so a renamed flag breaks this test, not a rollout.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from flowtrail.commands import load

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
VERSIONS = ("1.28.0", latest_version())


def documents() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                out.append((f"{path.name}:{doc['kind']}/{doc['metadata']['name']}", doc))
    return out


def test_the_manifests_hold_what_a_fleet_needs() -> None:
    kinds = {name.split(":")[1] for name, _ in documents()}
    assert {
        "DaemonSet/flowtrail-agent",
        "Deployment/flowtrail-server",
        "Service/flowtrail-server",
        "ClusterRole/flowtrail-agent",
    } <= kinds


@pytest.mark.parametrize("version", VERSIONS)
def test_every_object_is_valid_for_kubernetes(version: str) -> None:
    for name, doc in documents():
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{name}: {e.message} at {'.'.join(map(str, e.path))}")


def test_an_invalid_object_is_caught() -> None:
    """The validator really checks: a misspelt field in the DaemonSet fails."""
    doc = next(d for n, d in documents() if n.endswith("DaemonSet/flowtrail-agent"))
    doc["spec"]["template"]["spec"]["hostNetwrok"] = True
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(doc, VERSIONS[0], strict=True)


def containers() -> list[tuple[str, dict[str, Any]]]:
    out = []
    for name, doc in documents():
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
        out += [(f"{name}/{c['name']}", c) for c in spec.get("containers", [])]
    return out


@pytest.mark.parametrize("name", [n for n, _ in containers()])
def test_container_arguments_parse(name: str) -> None:
    container = dict(containers())[name]
    args = [a.replace("$(NODE_NAME)", "node-1") for a in container["args"]]
    command = load(args[0])
    ctx = command.make_context(args[0], args[1:], resilient_parsing=False)
    assert isinstance(ctx, click.Context)
    params = ctx.params
    if args[0] == "agent":
        assert params["sink"] == "collector" and params["out_dir"].startswith("https://")
        env = {e["name"]: e.get("value") for e in container["env"]}
        assert env["FLOWTRAIL_COLLECTOR_TOKEN_FILE"].endswith("/$(NODE_NAME)")


def test_agent_mounts_are_read_only_but_its_spool() -> None:
    _, agent = next(c for c in containers() if c[0].endswith("/agent"))
    writable = [m["mountPath"] for m in agent["volumeMounts"] if not m.get("readOnly")]
    assert writable == ["/var/lib/flowtrail"]
    assert agent["securityContext"]["privileged"] is False
    assert agent["securityContext"]["capabilities"]["drop"] == ["ALL"]
