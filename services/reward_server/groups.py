"""Whole groups and assembled parts: the logic of ``POST /v1/groups``, ``SubmitGroup``
and each message of the ``RewardStream`` RPC, over the reward serving layer and the
:class:`~divreward.services.reward_server.assembler.GroupAssembler` deployment.

A whole group (``group_size`` unset) is rewarded at once, as ``/v1/rewards`` would. A
part is checked first (its images must decode, ``group_size`` must fit the per-group
limit: a part that could never complete a group is refused at once instead of holding
the other parts until the assembly timeout), then handed to the assembler; the part
that completes a group computes its rewards ("leads") and every part gets the numbers
of its own images.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from typing import Any

from divreward.schema import RewardGroup, RewardsRequest, RewardsResponse
from divreward.schema_stream import AssembledGroup, GroupSubmission, GroupSubmissionResult
from divreward.services.common.decode import decode_group
from divreward.services.common.errors import ServiceError, to_service_error
from divreward.services.common.limits import check_counts
from divreward.services.common.tenants import current_tenant
from divreward.services.config import AssemblyArgs
from divreward.services.reward_server.assembler import Outcome, Segment

__all__ = ["GroupService", "params_key"]


def params_key(sub: GroupSubmission) -> str:
    """A digest of the parameters that must agree across the parts of a group."""
    data = sub.model_dump(
        mode="json",
        include={
            "quality",
            "diversity",
            "advantage",
            "return_embeddings",
            "aggregation",
            "metadata",
        },
        exclude_unset=True,
    )
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()


def _rewards_request(
    sub: GroupSubmission, images: list[bytes], request_id: str | None
) -> RewardsRequest:
    data: dict[str, Any] = {
        "groups": [
            RewardGroup(
                prompt=sub.prompt, images=images, group_id=sub.group_id, metadata=sub.metadata
            )
        ],
        "request_id": request_id,
    }
    for name in ("quality", "diversity", "advantage", "return_embeddings", "aggregation"):
        if name in sub.model_fields_set:
            data[name] = getattr(sub, name)
    return RewardsRequest(**data)


class GroupService:
    """Whole groups and assembled parts, over the reward serving layer.

    ``serving``: a :class:`~divreward.services.reward_server.serving.RewardServing`;
    ``assembler``: the handle to :class:`GroupAssembler` bound into the reward app (the
    HTTP route and the gRPC methods share this one service, so one handle).
    """

    def __init__(self, serving: Any, assembler: Any = None, args: AssemblyArgs | None = None):
        self.serving = serving
        self._assembler = assembler
        # the reward app's configured settings (RewardAppArgs.assembly) unless given
        configured = getattr(getattr(serving, "args", None), "assembly", None)
        self.args: AssemblyArgs = args or configured or AssemblyArgs()

    @property
    def assembler(self) -> Any:
        if self._assembler is None:
            raise RuntimeError("GroupService has no assembler handle (bind one in the app)")
        return self._assembler

    async def check_part(self, sub: GroupSubmission) -> None:
        """Refuse at once a part that would fail its group only once complete: a
        ``group_size`` above the per-group limit (the group could never be rewarded) or
        an image that does not decode (the whole group would fail after every other
        part had waited for it). Decoding here costs a second decode of the part's
        images; it is small beside the models' forward passes."""
        assert sub.group_size is not None
        limits = self.serving.args.limits
        if sub.group_size > limits.max_images_per_group:
            raise ServiceError(
                413,
                "payload_too_large",
                f"group_size: {sub.group_size} images exceed the limit of "
                f"{limits.max_images_per_group} per group",
            )
        check_counts([len(sub.images)], limits, grouped=False)
        await asyncio.to_thread(decode_group, sub.images, None, limits.max_pixels_per_image)

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
        await self.check_part(sub)
        timeout = min(
            sub.assembly_timeout_s or self.args.default_timeout_s, self.args.max_timeout_s
        )
        segments: list[Segment] = await self.assembler.add.remote(
            current_tenant(),  # groups are kept per tenant
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
