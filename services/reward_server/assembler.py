"""Group assembly: parts of a prompt's group, sent from several calls, ranks or stream
messages, held until the group is whole, then rewarded as one group.

Trainers such as Flow-GRPO spread a prompt's G images over calls and ranks, but the
diversity rewards need the whole group. A part is a
:class:`~divreward.schema_stream.GroupSubmission` with ``group_size`` set; parts that
share ``namespace`` and ``group_id`` fill groups of ``group_size`` images in arrival
order (images beyond it open the next group of that id, ``sequence`` 1, 2, ...).

Three pieces:

- :class:`GroupAssembler`, a single-replica deployment holding the pending groups (one
  replica, so every part of a group meets in one place). It only keeps state: when a
  part completes a group it hands the whole group to *that* part's caller (the
  "leader"), which computes the rewards through the reward serving layer and sends the
  outcome back with ``resolve``; the other parts' callers ``wait`` for it. A group still
  incomplete ``timeout_s`` after its first part fails every waiting part with a 408 that
  says how many images arrived; its images are released.
- :class:`GroupService`, the logic of ``SubmitGroup`` / ``POST /v1/groups`` and of each
  message of the ``RewardStream`` RPC, over :class:`RewardServing` and the assembler.
- ``groups_router``: ``POST /v1/groups``.

A part retried with the same ``request_id`` (e.g. after a connection error) joins its
earlier self instead of adding its images twice.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from ray import serve

from divreward.schema import RewardGroup, RewardsRequest, RewardsResponse
from divreward.schema_stream import AssembledGroup, GroupSubmission, GroupSubmissionResult
from divreward.services.config import AssemblyArgs
from divreward.services.errors import ServiceError
from divreward.services.http import Api, body_doc, error_responses

__all__ = [
    "ASSEMBLER",
    "AssemblyArgs",
    "GroupAssembler",
    "GroupService",
    "assembler_deployment",
    "groups_router",
]

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


Outcome = tuple[str, Any]  # ("ok", RewardsResponse) | ("error", ServiceError)


class GroupAssembler:
    """Pending groups of one reward application (deploy with exactly one replica)."""

    def __init__(self, args: AssemblyArgs | None = None) -> None:
        self.args = args or AssemblyArgs()
        self._open: dict[tuple[str, str], _Group] = {}
        self._groups: dict[str, _Group] = {}
        self._next_seq: dict[tuple[str, str], int] = {}
        self._parts: dict[tuple[str, str, str], list[Segment]] = {}
        self._pending_images = 0

    async def add(
        self,
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
        completed group's images). Raises ServiceError for a part that does not fit."""
        key = (namespace, group_id)
        dup = self._parts.get((namespace, group_id, part_id))
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
        self._parts[(namespace, group_id, part_id)] = segments
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
                "differ from its first part's; send the same parameters with every part",
            )

    def _new_group(
        self,
        key: tuple[str, str],
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
            namespace=key[0],
            group_id=key[1],
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
        self._open.pop((group.namespace, group.group_id), None)
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
        self._open.pop((group.namespace, group.group_id), None)
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
            segs = self._parts.get((group.namespace, group.group_id, part_id))
            if segs is not None and all(s.token not in self._groups for s in segs):
                del self._parts[(group.namespace, group.group_id, part_id)]

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


def assembler_deployment(args: AssemblyArgs | None = None) -> Any:
    """The bound assembler deployment of a reward application (one replica; a high
    ``max_ongoing_requests`` because waiting parts hold a call open each)."""
    deployment: Any = serve.deployment(
        GroupAssembler,
        name=ASSEMBLER,
        num_replicas=1,
        max_ongoing_requests=100_000,
        ray_actor_options={"num_cpus": 0},
    )
    return deployment.bind(args or AssemblyArgs())


# --------------------------------------------------------------------- the service
def params_key(sub: GroupSubmission) -> str:
    """A digest of the parameters that must agree across the parts of a group."""
    data = sub.model_dump(
        mode="json",
        include={"quality", "diversity", "advantage", "return_embeddings"},
        exclude_unset=True,
    )
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _rewards_request(
    sub: GroupSubmission, images: list[bytes], request_id: str | None
) -> RewardsRequest:
    data: dict[str, Any] = {
        "groups": [RewardGroup(prompt=sub.prompt, images=images, group_id=sub.group_id)],
        "request_id": request_id,
    }
    for name in ("quality", "diversity", "advantage", "return_embeddings"):
        if name in sub.model_fields_set:
            data[name] = getattr(sub, name)
    return RewardsRequest(**data)


class GroupService:
    """Whole groups and assembled parts, over the reward serving layer.

    ``serving``: a :class:`~divreward.services.reward_server.serving.RewardServing`;
    ``assembler``: a handle to :class:`GroupAssembler` (looked up by name when None).
    """

    def __init__(self, serving: Any, assembler: Any = None, args: AssemblyArgs | None = None):
        self.serving = serving
        self._assembler = assembler
        # the reward app's configured settings (RewardAppArgs.assembly) unless given
        self.args = args or getattr(getattr(serving, "args", None), "assembly", AssemblyArgs())

    @property
    def assembler(self) -> Any:
        if self._assembler is None:
            app = serve.get_replica_context().app_name
            self._assembler = serve.get_deployment_handle(ASSEMBLER, app)
        return self._assembler

    async def submit(self, sub: GroupSubmission) -> GroupSubmissionResult:
        """Rewards for the images of one submission (raises ServiceError)."""
        if sub.group_size is None:
            resp = await self.serving.rewards(
                _rewards_request(sub, list(sub.images), sub.request_id)
            )
            n = len(sub.images)
            return self._result(sub, [(Segment("", 0, list(range(n)), list(range(n))), resp)])
        return await self._assemble(sub)

    async def _assemble(self, sub: GroupSubmission) -> GroupSubmissionResult:
        assert sub.group_size is not None
        timeout = min(
            sub.assembly_timeout_s or self.args.default_timeout_s, self.args.max_timeout_s
        )
        segments: list[Segment] = await self.assembler.add.remote(
            sub.namespace or "default",
            sub.group_id,
            sub.request_id or uuid.uuid4().hex,
            sub.prompt,
            list(sub.images),
            sub.group_size,
            params_key(sub),
            timeout,
        )

        async def outcome(seg: Segment) -> tuple[Segment, RewardsResponse]:
            if seg.leader_images is not None:
                # Shielded: if this caller goes away, the others still get the rewards.
                result = await asyncio.shield(asyncio.ensure_future(self._lead(sub, seg)))
            else:
                result = await self.assembler.wait.remote(seg.token)
            status, value = result
            if status == "error":
                raise value
            return seg, value

        done = await asyncio.gather(*(outcome(s) for s in segments))
        return self._result(sub, list(done))

    async def _lead(self, sub: GroupSubmission, seg: Segment) -> Outcome:
        assert seg.leader_images is not None
        try:
            resp = await self.serving.rewards(_rewards_request(sub, seg.leader_images, None))
            outcome: Outcome = ("ok", resp)
        except ServiceError as exc:
            outcome = ("error", _in_group(exc, sub, seg))
        except Exception as exc:  # every part of the group must hear about it
            from divreward.services.http import to_service_error

            outcome = ("error", _in_group(to_service_error(exc), sub, seg))
        await self.assembler.resolve.remote(seg.token, outcome)
        return outcome

    def _result(
        self, sub: GroupSubmission, done: list[tuple[Segment, RewardsResponse]]
    ) -> GroupSubmissionResult:
        n = len(sub.images)
        rewards = [0.0] * n
        advantages = [0.0] * n
        quality: dict[str, list[float]] = {}
        groups: list[AssembledGroup] = []
        models: dict[str, Any] = {}
        warnings: list[str] = []
        for seg, resp in done:
            res = resp.groups[0]
            for p, q in zip(seg.positions, seg.group_positions, strict=True):
                rewards[p] = res.rewards[q]
                advantages[p] = res.advantages[q]
                for name, values in res.quality.items():
                    quality.setdefault(name, [0.0] * n)[p] = values[q]
            groups.append(
                AssembledGroup(
                    sequence=seg.sequence,
                    positions=seg.positions,
                    group_positions=seg.group_positions,
                    result=res,
                )
            )
            models.update(resp.models)
            warnings.extend(w for w in resp.warnings if w not in warnings)
        last = done[-1][1]
        return GroupSubmissionResult(
            request_id=sub.request_id,
            profile=last.profile,
            warnings=warnings,
            group_id=sub.group_id,
            rewards=rewards,
            advantages=advantages,
            quality=quality,
            groups=groups,
            models=models,
            params=last.params,
        )


def _in_group(err: ServiceError, sub: GroupSubmission, seg: Segment) -> ServiceError:
    return ServiceError(
        err.status,
        err.kind,
        f"assembled group {sub.group_id!r} #{seg.sequence}: {err.message}",
        group_index=None,
        image_index=err.image_index,
        valid=err.valid,
        details=err.details,
        retry_after_s=err.retry_after_s,
    )


# --------------------------------------------------------------------- the route
groups_router = APIRouter(tags=["rewards"])


def group_service(request: Request) -> GroupService:
    """The app's GroupService, made on first use over its reward serving layer."""
    state = request.app.state
    service = getattr(state, "groups", None)
    if service is None:
        service = GroupService(state.serving)
        state.groups = service
    return service


@groups_router.post(
    "/v1/groups",
    summary="Rewards of one group, or of a part of a group the server assembles "
    "(group_size set); answers once the group is complete.",
    openapi_extra=body_doc(GroupSubmission),
    responses={
        200: {"model": GroupSubmissionResult},
        **error_responses(400, 401, 408, 409, 413, 415, 422, 503, 504),
    },
)
async def submit_group(request: Request) -> Response:
    api: Api = request.app.state.api
    service = group_service(request)
    return await api.handle(
        request, "/v1/groups", GroupSubmission, service.submit, lambda r: len(r.images)
    )
