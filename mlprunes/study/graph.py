"""A study as a graph of jobs: each node a job, each edge an input run one job needs from
another (a `Ref` in its fields) or an explicit `after`. Nodes are added after what they need, so
the graph has no cycles and the order of adding is an order to run in."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

from mlprunes.jobs import Job, Ref


@dataclass(frozen=True)
class Node:
    name: str
    job: Job
    after: tuple[str, ...] = ()      # nodes to wait for without taking their run as an input

    @property
    def needs(self) -> tuple[str, ...]:
        names = [ref.node for ref in self.job.refs()] + list(self.after)
        return tuple(dict.fromkeys(names))


class Graph:
    def __init__(self) -> None:
        self._nodes: dict[str, Node] = {}

    def add(self, name: str, job: Job, after: tuple[str, ...] = ()) -> Ref:
        """Add a job; return a Ref for the jobs that take its run as an input."""
        if name in self._nodes:
            raise ValueError(f"the study already has a job named {name!r}")
        node = Node(name, job, tuple(after))
        unknown = [n for n in node.needs if n not in self._nodes]
        if unknown:
            raise ValueError(f"job {name!r} needs {', '.join(unknown)}, which the study does "
                             f"not have (yet): add what a job needs before it")
        self._nodes[name] = node
        return Ref(name)

    def __iter__(self) -> Iterator[Node]:
        return iter(self._nodes.values())

    def __len__(self) -> int:
        return len(self._nodes)

    def __getitem__(self, name: str) -> Node:
        return self._nodes[name]

    @property
    def names(self) -> list[str]:
        return list(self._nodes)
