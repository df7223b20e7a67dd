"""Group assembly: parts of a prompt's group, sent from several calls, ranks or stream
messages, held until the group is whole, then rewarded as one group.

Trainers such as Flow-GRPO spread a prompt's G images over calls and ranks, but the
diversity rewards need the whole group. A part is a
:class:`~divreward.schema_stream.GroupSubmission` with ``group_size`` set; parts that
share ``namespace`` and ``group_id`` fill groups of ``group_size`` images in arrival
order (images beyond it open the next group of that id, ``sequence`` 1, 2, ...).
Groups are kept per tenant (the caller's token, :mod:`divreward.services.common.tenants`):
two tenants that use the same namespace and ``group_id`` never touch each other's
groups.

This module is the deployment: :class:`GroupAssembler`, a single-replica deployment
holding the pending groups (one replica, so every part of a group meets in one place).
It only keeps state: when a part completes a group it hands the whole group to *that*
part's caller (the "leader"), which computes the rewards through the reward serving
layer and sends the outcome back with ``resolve``; the other parts' callers ``wait``
for it. A group still incomplete ``timeout_s`` after its first part fails every waiting
part with a 408 that says how many images arrived; its images are released. The logic
of a submission is :class:`~divreward.services.reward_server.groups.GroupService`.

A part retried with the same ``request_id`` (e.g. after a connection error) joins its
earlier self instead of adding its images twice.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ray import serve

from divreward.services.common.deployments import Overrides
from divreward.services.common.errors import ServiceError
from divreward.services.config import AssemblyArgs

__all__ = ["ASSEMBLER", "GroupAssembler", "Outcome", "Segment", "assembler_deployment"]

log = logging.getLogger("ray.serve")

#: Deployment name of the assembler inside the reward application.
ASSEMBLER = "GroupAssembler"


# --------------------------------------------------------------------- the deployment
@dataclass
class Segment:
    """Where some images of one part landed: one group, its positions, and - for the
    part that completed the group - the whole group's images to compute."""

    token: str
    sequence: int
    positions: list[int]  # indices in the part
    group_positions: list[int]  # indices in the group
    leader_images: list[bytes] | None = None


@dataclass
class _Group:
    token: str
    tenant: str
    namespace: str
    group_id: str
    sequence: int
    size: int
    prompt: str
    params_key: str
    deadline: float
    timeout_s: float
    done: asyncio.Future[Any]
    images: list[bytes] = field(default_factory=list)
    parts: list[str] = field(default_factory=list)
    timer: asyncio.TimerHandle | None = None
    completed_at: float | None = None

    def describe(self) -> str:
        return f"group {self.group_id!r} (namespace {self.namespace!r}, #{self.sequence})"

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.tenant, self.namespace, self.group_id)


Outcome = tuple[str, Any]  # ("ok", RewardsResponse) | ("error", ServiceError)


class GroupAssembler:
    """Pending groups of one reward application (deploy with exactly one replica)."""

    def __init__(self, args: AssemblyArgs | None = None) -> None:
        self.args = args or AssemblyArgs()
        # keyed by (tenant, namespace, group_id); parts by that and the part's id
        self._open: dict[tuple[str, str, str], _Group] = {}
        self._groups: dict[str, _Group] = {}
        self._next_seq: dict[tuple[str, str, str], int] = {}
        self._parts: dict[tuple[str, str, str, str], list[Segment]] = {}
        self._pending_images = 0

    async def add(
        self,
        tenant: str,
        namespace: str,
        group_id: str,
        part_id: str,
        prompt: str,
        images: list[bytes],
        group_size: int,
        params_key: str,
        timeout_s: float,
    ) -> list[Segment]:
        """Add a part; returns the segments it landed in (a leader segment carries the
        completed group's images). Raises ServiceError for a part that does not fit.
        ``tenant``: whose part it is (groups are kept per tenant)."""
        key = (tenant, namespace, group_id)
        dup = self._parts.get((*key, part_id))
        if dup is not None:
            # A retry of a part already placed: wait for the same groups, never lead.
            return [Segment(s.token, s.sequence, s.positions, s.group_positions) for s in dup]
        current = self._open.get(key)
        if current is not None:
            self._check_fits(current, prompt, group_size, params_key)
        if self._pending_images + len(images) > self.args.max_pending_images:
            raise ServiceError(
                503,
                "overloaded",
                f"group assembly holds {self._pending_images} images in incomplete groups "
                f"(limit {self.args.max_pending_images}); retry later",
                retry_after_s=1.0,
            )
        loop = asyncio.get_running_loop()
        segments: list[Segment] = []
        taken = 0
        while taken < len(images):
            group = self._open.get(key)
            if group is None:
                group = self._new_group(key, prompt, group_size, params_key, timeout_s, loop)
            room = group.size - len(group.images)
            n = min(room, len(images) - taken)
            start = len(group.images)
            group.images.extend(images[taken : taken + n])
            group.parts.append(part_id)
            self._pending_images += n
            seg = Segment(
                group.token,
                group.sequence,
                list(range(taken, taken + n)),
                list(range(start, start + n)),
            )
            taken += n
            if len(group.images) == group.size:
                self._complete(group)
                seg.leader_images = group.images
            segments.append(seg)
        self._parts[(*key, part_id)] = segments
        return segments

    def _check_fits(self, group: _Group, prompt: str, size: int, params_key: str) -> None:
        if group.size != size:
            raise ServiceError(
                422,
                "invalid_request",
                f"group_size: {group.describe()} is being assembled with group_size "
                f"{group.size}, this part says {size}; every part must give the same",
            )
        if group.prompt != prompt:
            raise ServiceError(
                422,
                "invalid_request",
                f"prompt: {group.describe()} is being assembled for the prompt "
                f"{group.prompt[:80]!r}, this part has {prompt[:80]!r}; a group has one prompt",
            )
        if group.params_key != params_key:
            raise ServiceError(
                409,
                "conflict",
                f"{group.describe()}: this part's quality/diversity/advantage parameters "
                "differ from its first part's (or its metadata does); send the same ones "
                "with every part",
            )

    def _new_group(
        self,
        key: tuple[str, str, str],
        prompt: str,
        size: int,
        params_key: str,
        timeout_s: float,
        loop: asyncio.AbstractEventLoop,
    ) -> _Group:
        seq = self._next_seq.get(key, 0)
        self._next_seq[key] = seq + 1
        group = _Group(
            token=uuid.uuid4().hex,
            tenant=key[0],
            namespace=key[1],
            group_id=key[2],
            sequence=seq,
            size=size,
            prompt=prompt,
            params_key=params_key,
            deadline=time.monotonic() + timeout_s,
            timeout_s=timeout_s,
            done=loop.create_future(),
        )
        group.timer = loop.call_later(timeout_s, self._expire, group.token)
        self._open[key] = group
        self._groups[group.token] = group
        return group

    def _complete(self, group: _Group) -> None:
        self._open.pop(group.key, None)
        self._pending_images -= group.size
        group.completed_at = time.monotonic()
        if group.timer is not None:
            group.timer.cancel()
        # Waiting parts give up if the leader never resolves (it died, say).
        group.timer = asyncio.get_running_loop().call_later(
            self.args.compute_timeout_s, self._compute_timed_out, group.token
        )

    def _expire(self, token: str) -> None:
        group = self._groups.get(token)
        if group is None or group.completed_at is not None:
            return
        self._open.pop(group.key, None)
        self._pending_images -= len(group.images)
        err = ServiceError(
            408,
            "timeout",
            f"{group.describe()} is incomplete: {len(group.images)} of {group.size} images "
            f"arrived from {len(group.parts)} part(s) within {group.timeout_s:g} s; check "
            "group_size and that every rank submits its share of the group",
        )
        group.images = []
        self._settle(group, ("error", err))

    def _compute_timed_out(self, token: str) -> None:
        group = self._groups.get(token)
        if group is None or group.done.done():
            return
        err = ServiceError(
            504,
            "timeout",
            f"{group.describe()} was complete but its rewards did not arrive within "
            f"{self.args.compute_timeout_s:g} s (the replica computing them failed?)",
        )
        self._settle(group, ("error", err))

    def _settle(self, group: _Group, outcome: Outcome) -> None:
        if not group.done.done():
            group.done.set_result(outcome)
        if group.timer is not None:
            group.timer.cancel()
        group.images = []
        # Keep the outcome a while for retried parts, then forget the group.
        group.timer = asyncio.get_running_loop().call_later(
            self.args.keep_resolved_s, self._forget, group.token
        )

    def _forget(self, token: str) -> None:
        group = self._groups.pop(token, None)
        if group is None:
            return
        for part_id in set(group.parts):
            segs = self._parts.get((*group.key, part_id))
            if segs is not None and all(s.token not in self._groups for s in segs):
                del self._parts[(*group.key, part_id)]

    async def wait(self, token: str) -> Outcome:
        """The outcome of a group: its RewardsResponse, or the error that ended it."""
        group = self._groups.get(token)
        if group is None:
            return (
                "error",
                ServiceError(
                    504,
                    "timeout",
                    "the group was forgotten before its outcome was read (it ended more "
                    "than keep_resolved_s ago)",
                ),
            )
        result: Outcome = await asyncio.shield(group.done)
        return result

    async def resolve(self, token: str, outcome: Outcome) -> None:
        """The leader reports the rewards (or the error) of a completed group."""
        group = self._groups.get(token)
        if group is not None:
            self._settle(group, outcome)

    async def stats(self) -> dict[str, int]:
        """Incomplete groups and the images they hold (for tests and operators)."""
        return {
            "open_groups": len(self._open),
            "pending_images": self._pending_images,
            "known_groups": len(self._groups),
        }


def assembler_deployment(
    args: AssemblyArgs | None = None, overrides: Overrides | None = None
) -> Any:
    """The bound assembler deployment of a reward application (one replica; a high
    ``max_ongoing_requests`` because waiting parts hold a call open each), with a config
    file's overrides of ``GroupAssembler`` applied."""
    options = {
        "name": ASSEMBLER,
        "num_replicas": 1,
        "max_ongoing_requests": 100_000,
        "ray_actor_options": {"num_cpus": 0},
    }
    deployment: Any = serve.deployment()(GroupAssembler).options(
        **(overrides or Overrides()).apply(options)
    )
    return deployment.bind(args or AssemblyArgs())
