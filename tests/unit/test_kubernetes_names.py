"""Kubernetes pods named by their workload: name patterns, the kubelet's directories, the API.

The directory trees are laid out as the kubelet lays them out (/var/log/pods/<ns>_<pod>_<uid>,
/var/lib/kubelet/pods/<uid>/etc-hosts and the projected service-account volume). The API is a
stand-in HTTP server answering the three GETs the agent makes: no Kubernetes API server can
run on this machine.
"""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import pytest

from flowtrail.agent.identity import CgroupPaths, KubernetesResolver
from flowtrail.agent.kubernetes import SAFE, KubeApi, Pod, PodDirectory, workload_of_pod
from flowtrail.errors import InputError

UID = "0f3c9a4e-1b2d-4c5e-8f70-123456789abc"
UID2 = "9a8b7c6d-1111-2222-3333-444455556666"


@pytest.mark.parametrize(
    ("pod", "owner", "kind"),
    [
        ("cart-7d9f8b6c5d-x2kqz", "cart", "deployment"),
        ("payments-api-5b6c7d8f9-hzt4w", "payments-api", "deployment"),
        ("report-29400515-q8x7p", "report", "cronjob"),
        ("node-exporter-x2kqz", "node-exporter", "daemonset|job|replicaset"),
        ("migrate-db-bqz6d", "migrate-db", "daemonset|job|replicaset"),
        ("db-0", "db", "statefulset"),
        ("kafka-broker-12", "kafka-broker", "statefulset"),
        # Not a controller's pattern: a bare pod is its own workload.
        ("debug-shell", "debug-shell", "pod"),
        ("api-server", "api-server", "pod"),  # "server" has vowels: never generated
        ("worker-01", "worker-01", "pod"),  # an ordinal never has a leading zero
        ("cache-abcde", "cache-abcde", "pod"),  # a, e: not in the safe alphabet
    ],
)
def test_owner_from_pod_name(pod: str, owner: str, kind: str) -> None:
    assert workload_of_pod(pod) == (owner, kind)


def test_safe_alphabet_has_no_vowels_nor_lookalikes() -> None:
    assert not set(SAFE) & set("aeiouy013")
    assert len(SAFE) == 27


def kubelet_dir(root: Path, uid: str, pod: str, namespace: str | None) -> None:
    """/var/lib/kubelet/pods/<uid> as the kubelet leaves it (hosts file, projected token)."""
    base = root / uid
    base.mkdir(parents=True)
    (base / "etc-hosts").write_text(
        "# Kubernetes-managed hosts file.\n127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n"
        f"fe00::0\tip6-localnet\n\n10.244.1.7\t{pod}\n"
    )
    projected = base / "volumes" / "kubernetes.io~projected" / "kube-api-access-x2kqz"
    data = projected / "..2026_12_08_01_02_03.123"
    data.mkdir(parents=True)
    (projected / "..data").symlink_to(data.name)
    if namespace is not None:
        (data / "namespace").write_text(namespace)
        (projected / "namespace").symlink_to("..data/namespace")


def test_pod_directory_reads_logs_then_kubelet_dirs(tmp_path: Path) -> None:
    logs, kubelet = tmp_path / "log-pods", tmp_path / "kubelet-pods"
    (logs / f"shop_cart-7d9f8b6c5d-x2kqz_{UID}" / "cart").mkdir(parents=True)
    kubelet_dir(kubelet, UID2, "db-0", "data")
    kubelet_dir(kubelet, "no-token-uid", "loner", None)  # automountServiceAccountToken: false
    pods = PodDirectory(str(logs), str(kubelet))
    assert pods.get(UID) == Pod("shop", "cart-7d9f8b6c5d-x2kqz", UID)
    assert pods.get(UID2) == Pod("data", "db-0", UID2)
    assert pods.get("no-token-uid") is None
    assert pods.get("unknown") is None


class FakeApi(http.server.BaseHTTPRequestHandler):
    """Answers pods, replicasets and jobs from `OBJECTS`; counts requests."""

    OBJECTS: ClassVar[dict[str, dict[str, Any]]] = {}
    asked: ClassVar[list[str]] = []

    def do_GET(self) -> None:
        type(self).asked.append(self.path)
        body = self.OBJECTS.get(self.path)
        if self.headers.get("Authorization") != "Bearer sa-token" or body is None:
            self.send_response(403 if body is not None else 404)
            self.end_headers()
            return
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        pass


def owned_by(kind: str, name: str) -> dict[str, Any]:
    return {"metadata": {"ownerReferences": [{"kind": kind, "name": name, "controller": True}]}}


@pytest.fixture
def api_url() -> Iterator[str]:
    FakeApi.OBJECTS = {
        # A Deployment's pod whose name does not follow the pattern (pods renamed by a
        # mutating webhook): only the API can tell.
        "/api/v1/namespaces/shop/pods/cart-main": owned_by("ReplicaSet", "cart-5b6c7d8f9"),
        "/apis/apps/v1/namespaces/shop/replicasets/cart-5b6c7d8f9": owned_by("Deployment", "cart"),
        "/api/v1/namespaces/ops/pods/report-29400515-q8x7p": owned_by("Job", "report-29400515"),
        "/apis/batch/v1/namespaces/ops/jobs/report-29400515": owned_by("CronJob", "report"),
        # A bare pod whose name looks generated: the pattern alone would cut it.
        "/api/v1/namespaces/ops/pods/cache-bqz6d": {"metadata": {}},
    }
    FakeApi.asked = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_api_names_the_top_controller_once_per_pod(api_url: str) -> None:
    api = KubeApi(api_url, "sa-token", None)
    assert api.owner(Pod("shop", "cart-main", "u1")) == "cart"
    assert api.owner(Pod("ops", "report-29400515-q8x7p", "u2")) == "report"
    assert api.owner(Pod("ops", "cache-bqz6d", "u3")) == "cache-bqz6d"
    asked = len(FakeApi.asked)
    assert api.owner(Pod("shop", "cart-main", "u1")) == "cart"  # cached by UID
    assert len(FakeApi.asked) == asked and api.errors == 0


def test_api_failure_is_counted_and_the_pattern_answers(api_url: str, tmp_path: Path) -> None:
    logs = tmp_path / "pods"
    (logs / f"shop_cart-7d9f8b6c5d-x2kqz_{UID}").mkdir(parents=True)
    (tmp_path / "cg").mkdir()
    cgroups = CgroupPaths(str(tmp_path / "cg"))
    cgroups.add(101, f"/kubepods/besteffort/pod{UID}/{'a' * 64}")
    wrong_token = KubeApi(api_url, "stale-token", None)
    r = KubernetesResolver(cgroups, str(logs), kubelet_pods=str(tmp_path / "k"), api=wrong_token)
    assert r.name_path(cgroups.path(101) or "") == "k8s:shop/cart"
    assert wrong_token.errors == 1
    assert r.pod_name(101) == "cart-7d9f8b6c5d-x2kqz"


def test_naming_pod_keeps_the_pod_name_and_bad_naming_is_refused(tmp_path: Path) -> None:
    logs = tmp_path / "pods"
    (logs / f"shop_cart-7d9f8b6c5d-x2kqz_{UID}").mkdir(parents=True)
    (tmp_path / "cg").mkdir()
    cgroups = CgroupPaths(str(tmp_path / "cg"))
    path = (
        f"/kubepods.slice/kubepods-pod{UID.replace('-', '_')}.slice/cri-containerd-{'b' * 64}.scope"
    )
    r = KubernetesResolver(cgroups, str(logs), kubelet_pods=str(tmp_path / "k"), naming="pod")
    assert r.name_path(path) == "k8s:shop/cart-7d9f8b6c5d-x2kqz"
    with pytest.raises(InputError, match="naming"):
        KubernetesResolver(cgroups, naming="deployment")


def test_in_cluster_needs_a_service_account(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    assert KubeApi.in_cluster(str(tmp_path)) is None  # no token file: not in a pod
    (tmp_path / "token").write_text("sa-token\n")
    api = KubeApi.in_cluster(str(tmp_path))
    assert api is not None and api.base_url == "https://10.96.0.1:443"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert KubeApi.in_cluster(str(tmp_path)) is None
