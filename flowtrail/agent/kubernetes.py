"""Kubernetes pods named at the level people think in: the workload that owns the pod.

A node knows its pods' names and namespaces without an API server (the kubelet's directories),
but not their owners. Controllers name pods by fixed patterns, so the owner's name is read from
the pod's name (docs/agent.md, "Kubernetes"):

    Deployment    <deployment>-<pod-template-hash>-<5>   hash: 6-10 chars of the safe alphabet
    CronJob       <cronjob>-<scheduled minute>-<5>       the Job is <cronjob>-<minute>
    DaemonSet, Job, bare ReplicaSet   <name>-<5>
    StatefulSet   <statefulset>-<ordinal>

The random parts use Kubernetes' safe alphabet (no vowels, no 0, 1 or 3), so ordinary words
do not look like them. Where the in-cluster API is reachable (a service account), the agent
asks it for the pod's controller instead, and the pattern is only the fallback.
"""

from __future__ import annotations

import json
import os
import re
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

# k8s.io/apimachinery's rand alphabet: generated name suffixes and pod-template-hash values.
SAFE = "bcdfghjklmnpqrstvwxz2456789"
_S = f"[{SAFE}]"
_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("cronjob", re.compile(rf"^(.+)-\d{{8,}}-{_S}{{5}}$")),
    ("deployment", re.compile(rf"^(.+)-{_S}{{6,10}}-{_S}{{5}}$")),
    ("statefulset", re.compile(r"^(.+)-(?:0|[1-9]\d{0,5})$")),
    ("daemonset|job|replicaset", re.compile(rf"^(.+)-{_S}{{5}}$")),
)

NAMINGS = ("workload", "pod")
SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def workload_of_pod(pod: str) -> tuple[str, str]:
    """(owner name, owner kind as far as the name tells) for a pod name; a pod that matches no
    controller's pattern is its own workload (kind `pod`)."""
    for kind, pattern in _PATTERNS:
        m = pattern.match(pod)
        if m:
            return m.group(1), kind
    return pod, "pod"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    uid: str


class PodDirectory:
    """A node's pods by UID, read from what the kubelet leaves on disk.

    - /var/log/pods/<namespace>_<pod>_<uid>/ (the container log directories), else
    - /var/lib/kubelet/pods/<uid>/: the pod name is the host name the kubelet wrote into
      `etc-hosts` (its last line) and the namespace is the `namespace` file of the projected
      service-account volume (absent when a pod opts out of the token: then unnamed here).
    """

    def __init__(
        self, pod_logs: str = "/var/log/pods", kubelet_pods: str = "/var/lib/kubelet/pods"
    ) -> None:
        self.pod_logs = pod_logs
        self.kubelet_pods = kubelet_pods
        self._by_uid: dict[str, Pod] = {}

    def get(self, uid: str) -> Pod | None:
        if uid not in self._by_uid:
            self._scan_logs()
        if uid not in self._by_uid:
            found = self._from_kubelet_dir(uid)
            if found is not None:
                self._by_uid[uid] = found
        return self._by_uid.get(uid)

    def _scan_logs(self) -> None:
        try:
            entries = os.listdir(self.pod_logs)
        except OSError:
            return
        for entry in entries:
            parts = entry.rsplit("_", 2)
            if len(parts) == 3 and all(parts):
                self._by_uid[parts[2]] = Pod(parts[0], parts[1], parts[2])

    def _from_kubelet_dir(self, uid: str) -> Pod | None:
        base = os.path.join(self.kubelet_pods, uid)
        name = _last_host_name(os.path.join(base, "etc-hosts"))
        namespace = _projected_namespace(os.path.join(base, "volumes", "kubernetes.io~projected"))
        if name is None or namespace is None:
            return None
        return Pod(namespace, name, uid)


def _last_host_name(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.split() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
    except OSError:
        return None
    # The kubelet appends "<pod IP>\t<hostname>[.<subdomain>...]" after the fixed entries.
    return lines[-1][1].split(".")[0] if lines and len(lines[-1]) >= 2 else None


def _projected_namespace(projected: str) -> str | None:
    try:
        volumes = sorted(os.listdir(projected))
    except OSError:
        return None
    for volume in volumes:
        try:
            with open(os.path.join(projected, volume, "namespace"), encoding="utf-8") as f:
                text = f.read().strip()
        except OSError:
            continue
        if text:
            return text
    return None


class KubeApi:
    """The in-cluster API, asked for a pod's controller (read-only GETs, short timeouts).

    Answers are cached per pod UID; a failed request is counted and the name pattern answers.
    """

    def __init__(
        self, base_url: str, token: str, context: ssl.SSLContext | None, timeout: float = 2.0
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.context = context
        self.timeout = timeout
        self.errors = 0
        self.asked = 0
        self._owners: dict[str, str] = {}

    @classmethod
    def in_cluster(cls, sa_dir: str = SA_DIR) -> KubeApi | None:
        """The API of the cluster this process runs in, or None outside one."""
        host = os.environ.get("KUBERNETES_SERVICE_HOST")
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        try:
            with open(os.path.join(sa_dir, "token"), encoding="utf-8") as f:
                token = f.read().strip()
        except OSError:
            return None
        if not host or not token:
            return None
        ca = os.path.join(sa_dir, "ca.crt")
        context = ssl.create_default_context(cafile=ca if os.path.exists(ca) else None)
        host = f"[{host}]" if ":" in host else host
        return cls(f"https://{host}:{port}", token, context)

    def _get(self, path: str) -> dict[str, Any]:
        request = urllib.request.Request(
            self.base_url + path,
            headers={"Authorization": f"Bearer {self.token}", "Accept": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as r:
            body: dict[str, Any] = json.load(r)
        return body

    def _controller(self, path: str) -> tuple[str, str] | None:
        refs = self._get(path).get("metadata", {}).get("ownerReferences") or []
        for ref in refs:
            if ref.get("controller") and ref.get("kind") and ref.get("name"):
                return str(ref["kind"]), str(ref["name"])
        return None

    def owner(self, pod: Pod) -> str | None:
        """The name of the top controller of `pod` (Deployment above its ReplicaSet, CronJob
        above its Job), the pod's own name when it has none, or None when the API failed."""
        if pod.uid in self._owners:
            return self._owners[pod.uid]
        self.asked += 1
        ns = pod.namespace
        try:
            owner = self._controller(f"/api/v1/namespaces/{ns}/pods/{pod.name}")
            name = pod.name
            if owner is not None:
                kind, name = owner
                parent_path = {
                    "ReplicaSet": f"/apis/apps/v1/namespaces/{ns}/replicasets/{name}",
                    "Job": f"/apis/batch/v1/namespaces/{ns}/jobs/{name}",
                }.get(kind)
                parent = self._controller(parent_path) if parent_path else None
                if parent is not None:
                    name = parent[1]
        except (OSError, urllib.error.URLError, ValueError):
            self.errors += 1
            return None
        self._owners[pod.uid] = name
        return name


def kubernetes_workload(pod: Pod, naming: str, api: KubeApi | None) -> str:
    """The local_workload of a socket in `pod`: `k8s:<namespace>/<workload>` (or the pod's
    own name with naming `pod`)."""
    if naming == "pod":
        return f"k8s:{pod.namespace}/{pod.name}"
    owner = api.owner(pod) if api is not None else None
    if owner is None:
        owner = workload_of_pod(pod.name)[0]
    return f"k8s:{pod.namespace}/{owner}"
