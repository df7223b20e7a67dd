"""Offline schema checks of Kubernetes objects: no API server runs here.

- KubeRay's ``ray.io/v1`` RayService: the fields of its CRD (KubeRay v1.3+'s Go types
  ``RayServiceSpec``, ``RayServiceUpgradeStrategy``, ``RayClusterSpec``,
  ``HeadGroupSpec``, ``WorkerGroupSpec``, ``AutoscalerOptions`` in
  ``ray-operator/apis/ray/v1/``) as a JSON schema that refuses unknown keys. The API
  server prunes unknown fields of a structural CRD schema silently, so a misspelt key
  would be dropped without a word: here it is an error.
- The core objects inside it (``corev1.PodTemplateSpec``, ``corev1.Service``) and the
  plain ones (Secret, PVC, Job) against the Kubernetes OpenAPI models of the official
  Python client (``kubernetes.client.V1*``: every field, its JSON name and its type).
"""

from __future__ import annotations

import re
from typing import Any

_INT32 = {"type": "integer", "minimum": -(2**31), "maximum": 2**31 - 1}
_STR_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_K8S = {"type": "object"}  # a core object, checked by check_k8s_object

_HEAD_GROUP = {
    "type": "object",
    "additionalProperties": False,
    "required": ["template", "rayStartParams"],
    "properties": {
        "template": _K8S,
        "headService": _K8S,
        "enableIngress": {"type": "boolean"},
        "rayStartParams": _STR_MAP,
        "serviceType": {"type": "string"},
    },
}
_WORKER_GROUP = {
    "type": "object",
    "additionalProperties": False,
    "required": ["groupName", "rayStartParams", "template"],
    "properties": {
        "suspend": {"type": "boolean"},
        "groupName": {"type": "string", "minLength": 1},
        "replicas": {**_INT32, "minimum": 0},
        "minReplicas": {**_INT32, "minimum": 0},
        "maxReplicas": {**_INT32, "minimum": 0},
        "idleTimeoutSeconds": _INT32,
        "rayStartParams": _STR_MAP,
        "template": _K8S,
        "scaleStrategy": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"workersToDelete": {"type": "array", "items": {"type": "string"}}},
        },
        "numOfHosts": {**_INT32, "minimum": 1},
    },
}
_AUTOSCALER = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "resources": _K8S,
        "image": {"type": "string"},
        "imagePullPolicy": {"enum": ["Always", "Never", "IfNotPresent"]},
        "securityContext": _K8S,
        "idleTimeoutSeconds": _INT32,
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
        "env": {"type": "array"},
        "envFrom": {"type": "array"},
        "volumeMounts": {"type": "array"},
    },
}
_CLUSTER = {
    "type": "object",
    "additionalProperties": False,
    "required": ["headGroupSpec"],
    "properties": {
        "suspend": {"type": "boolean"},
        "managedBy": {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]},
        "autoscalerOptions": _AUTOSCALER,
        "headServiceAnnotations": _STR_MAP,
        "enableInTreeAutoscaling": {"type": "boolean"},
        "gcsFaultToleranceOptions": {"type": "object"},
        "headGroupSpec": _HEAD_GROUP,
        "rayVersion": {"type": "string"},
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP},
    },
}
RAYSERVICE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "ray.io/v1"},
        "kind": {"const": "RayService"},
        "metadata": _K8S,
        "spec": {
            "type": "object",
            "additionalProperties": False,
            "required": ["rayClusterConfig"],
            "properties": {
                "rayClusterDeletionDelaySeconds": {**_INT32, "minimum": 0},
                "serviceUnhealthySecondThreshold": _INT32,
                "deploymentUnhealthySecondThreshold": _INT32,
                "serveService": _K8S,
                "upgradeStrategy": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "type": {
                            "enum": ["NewClusterWithIncrementalUpgrade", "NewCluster", "None"]
                        },
                        "clusterUpgradeOptions": {"type": "object"},
                    },
                },
                "serveConfigV2": {"type": "string"},
                "rayClusterConfig": _CLUSTER,
                "excludeHeadPodFromServeSvc": {"type": "boolean"},
            },
        },
    },
}

_PRIMITIVES: dict[str, tuple[type, ...]] = {
    "str": (str,),
    "int": (int,),
    "float": (int, float),
    "bool": (bool,),
    "datetime": (str,),
    "date": (str,),
    "object": (object,),
}


def _model(name: str) -> Any:
    import kubernetes.client as k

    return getattr(k, name)


def check_k8s_object(data: Any, model: str, where: str = "") -> list[str]:
    """Problems of ``data`` as the Kubernetes model ``model`` (e.g. ``"V1PodTemplateSpec"``):
    unknown keys (with the valid ones), wrong types, missing required fields."""
    problems: list[str] = []
    m = re.fullmatch(r"List\[(.+)\]", model)
    if m:
        if not isinstance(data, list):
            return [f"{where}: expected a list, got {type(data).__name__}"]
        for i, item in enumerate(data):
            problems += check_k8s_object(item, m.group(1), f"{where}[{i}]")
        return problems
    m = re.fullmatch(r"Dict\[str, (.+)\]", model)
    if m:
        if not isinstance(data, dict):
            return [f"{where}: expected a mapping, got {type(data).__name__}"]
        for key, item in data.items():
            problems += check_k8s_object(item, m.group(1), f"{where}.{key}")
        return problems
    if model in _PRIMITIVES:
        ok = isinstance(data, _PRIMITIVES[model]) and not (
            model in ("int", "float") and isinstance(data, bool)
        )
        return [] if ok else [f"{where}: expected {model}, got {data!r}"]
    cls = _model(model)
    if not isinstance(data, dict):
        return [f"{where}: expected a {model} mapping, got {type(data).__name__}"]
    by_json = {v: k for k, v in cls.attribute_map.items()}
    for key, value in data.items():
        attr = by_json.get(key)
        if attr is None:
            valid = ", ".join(sorted(by_json))
            problems.append(f"{where}.{key}: unknown field of {model} (valid: {valid})")
            continue
        problems += check_k8s_object(value, cls.openapi_types[attr], f"{where}.{key}")
    # Required fields (the client's models are pydantic models of the OpenAPI spec).
    for attr, field in cls.model_fields.items():
        if field.is_required() and cls.attribute_map.get(attr) not in data:
            problems.append(f"{where}: {model} requires {cls.attribute_map.get(attr)!r}")
    return problems
