"""gRPC methods of the reward ingress (owned by issue #5).

The reward ingress deployment inherits from :class:`RewardGrpcMethods`; the gRPC
methods (unary and streaming) are added here by issue #5 and call the same serving
layer as the HTTP routes (``self.serving``, a
:class:`~divreward.services.reward_server.serving.RewardServing`).
"""

from __future__ import annotations


class RewardGrpcMethods:
    """Mixin of the reward ingress; the gRPC methods are added by issue #5."""
