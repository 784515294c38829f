"""Whether an implementation offers every method of its Protocol, with the same parameters."""
from __future__ import annotations

import inspect
from typing import Any


def missing_methods(protocol: type, implementation: Any) -> list[str]:
    """The Protocol's methods the implementation lacks or takes other parameters for (names, kinds, defaults)."""
    wrong = []
    for name, member in vars(protocol).items():
        if name.startswith("_") or not callable(member):
            continue
        method = getattr(implementation, name, None)
        if method is None:
            wrong.append(f"{name}: missing")
            continue
        wanted = [(p.name, p.kind, p.default) for p in inspect.signature(member).parameters.values()][1:]  # self
        offered = [(p.name, p.kind, p.default) for p in inspect.signature(method).parameters.values()]
        if wanted != offered or inspect.iscoroutinefunction(member) != inspect.iscoroutinefunction(method):
            wrong.append(f"{name}: {inspect.signature(method)} for {inspect.signature(member)}")
    return wrong
