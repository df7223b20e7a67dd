"""Client calls against the real Serve app that no other test makes: evaluation metrics
over HTTP and gRPC, equal to the core's metrics of the service's own embeddings."""

from __future__ import annotations

import numpy as np
import pytest
from helpers import Service, make_images

from divreward.client import RewardClient
from divreward.core import evaluate_groups

pytestmark = [pytest.mark.serve, pytest.mark.timeout(300)]


def test_metrics_are_the_core_metrics_of_the_service_embeddings(service: Service) -> None:
    groups = [make_images(3, 700), make_images(4, 701)]
    with (
        RewardClient(service.http_url, downsize=False) as http,
        RewardClient(service.grpc_url, downsize=False) as grpc,
    ):
        embeddings = [np.asarray(http.embed(g).embeddings) for g in groups]
        expected = evaluate_groups(embeddings)
        for client in (http, grpc):
            got = client.metrics(groups).metrics
            assert got["num_groups"] == 2 and got["num_images"] == 7
            for key in ("mean_pairwise_distance", "drift_diversity", "vendi_pooled"):
                assert got[key] == pytest.approx(expected[key], rel=1e-5, abs=1e-6), key
