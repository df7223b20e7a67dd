"""Python client of the divreward service (sync and async, HTTP and gRPC).

See :mod:`divreward.client.client` for the methods and docs/client.md for examples.
"""

from divreward.client._requests import Group
from divreward.client.client import AsyncRewardClient, RewardClient
from divreward.client.errors import (
    RewardClientError,
    RewardRequestError,
    RewardServiceError,
    RewardTimeoutError,
    ServiceUnavailableError,
)
from divreward.client.retry import NO_RETRY, RetryPolicy

__all__ = [
    "NO_RETRY",
    "AsyncRewardClient",
    "Group",
    "RetryPolicy",
    "RewardClient",
    "RewardClientError",
    "RewardRequestError",
    "RewardServiceError",
    "RewardTimeoutError",
    "ServiceUnavailableError",
]
