"""The agent's rules for which addresses a listening socket stands for (flowtrail/agent/
listeners.py), on hand-made sightings; tests/kernel/test_listener_heartbeat.py shows them on
real sockets."""

from __future__ import annotations

from flowtrail.agent.listeners import Listener, Run, covered, named_runs, shared_address

ADDRESSES = {"10.0.0.5", "10.0.0.6", "fd00::5"}


def listener(ip: str, cookie: int = 1, v6only: bool = False) -> Listener:
    return Listener(cookie, 6 if ":" in ip else 4, ip, 8080, 99, v6only)


def test_a_bound_listener_stands_for_its_address_only_while_its_namespace_has_it() -> None:
    assert covered(listener("10.0.0.5"), ADDRESSES) == ["10.0.0.5"]
    assert covered(listener("10.0.0.7"), ADDRESSES) == []  # taken away (or never there)
    assert covered(listener("127.0.0.1"), ADDRESSES) == []


def test_a_wildcard_listener_stands_for_every_shared_address_of_its_family() -> None:
    assert covered(listener("0.0.0.0"), ADDRESSES) == ["10.0.0.5", "10.0.0.6"]
    assert covered(listener("::"), ADDRESSES) == ["10.0.0.5", "10.0.0.6", "fd00::5"]
    assert covered(listener("::", v6only=True), ADDRESSES) == ["fd00::5"]


def test_loopback_link_local_and_unspecified_addresses_are_nobodys() -> None:
    for ip in ("127.0.0.1", "::1", "169.254.1.1", "fe80::1", "0.0.0.0", "::"):
        assert not shared_address(ip), ip
    assert shared_address("10.0.0.5") and shared_address("fd00::5")


def runs(*spec: tuple[str, str]) -> list[Run]:
    return [Run(0, 0, 1, listener(bound, i), ip) for i, (bound, ip) in enumerate(spec)]


def test_a_wildcard_counts_only_in_a_namespace_whose_listeners_name_one_workload() -> None:
    alone = runs(("0.0.0.0", "10.0.0.5"), ("0.0.0.0", "10.0.0.6"), ("10.0.0.5", "10.0.0.5"))
    kept = named_runs(alone, ["api", "api", "api"])
    assert [(r.ip, r.workload) for r in kept] == [
        ("10.0.0.5", "api"), ("10.0.0.6", "api"), ("10.0.0.5", "api"),
    ]  # fmt: skip
    shared = runs(("0.0.0.0", "10.0.0.5"), ("0.0.0.0", "10.0.0.6"), ("10.0.0.6", "10.0.0.6"))
    kept = named_runs(shared, ["api", "api", "db"])
    assert [(r.listener.ip, r.ip, r.workload) for r in kept] == [("10.0.0.6", "10.0.0.6", "db")]


def test_a_listener_no_resolver_names_claims_nothing() -> None:
    assert named_runs(runs(("10.0.0.5", "10.0.0.5")), [None]) == []
