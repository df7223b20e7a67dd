from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class HealthRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReadyRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class FloatList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, values: _Optional[_Iterable[float]] = ...) -> None: ...

class IntList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, values: _Optional[_Iterable[int]] = ...) -> None: ...

class StringList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, values: _Optional[_Iterable[str]] = ...) -> None: ...

class BytesList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedScalarFieldContainer[bytes]
    def __init__(self, values: _Optional[_Iterable[bytes]] = ...) -> None: ...

class FloatMatrix(_message.Message):
    __slots__ = ("rows",)
    ROWS_FIELD_NUMBER: _ClassVar[int]
    rows: _containers.RepeatedCompositeFieldContainer[FloatList]
    def __init__(self, rows: _Optional[_Iterable[_Union[FloatList, _Mapping]]] = ...) -> None: ...

class FloatMap(_message.Message):
    __slots__ = ("values",)
    class ValuesEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.ScalarMap[str, float]
    def __init__(self, values: _Optional[_Mapping[str, float]] = ...) -> None: ...

class MetricsGroupList(_message.Message):
    __slots__ = ("values",)
    VALUES_FIELD_NUMBER: _ClassVar[int]
    values: _containers.RepeatedCompositeFieldContainer[MetricsGroup]
    def __init__(self, values: _Optional[_Iterable[_Union[MetricsGroup, _Mapping]]] = ...) -> None: ...

class LocItem(_message.Message):
    __slots__ = ("key", "index")
    KEY_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    key: str
    index: int
    def __init__(self, key: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class DiverseGRPOParams(_message.Message):
    __slots__ = ("beta", "sigma_mode", "sigma", "sigma_floor", "k_mode", "k", "k_max", "silhouette_min", "kmeans_n_init", "kmeans_max_iter", "seed", "solver", "approx_min_n", "approx_neighbors", "method")
    BETA_FIELD_NUMBER: _ClassVar[int]
    SIGMA_MODE_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FLOOR_FIELD_NUMBER: _ClassVar[int]
    K_MODE_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    K_MAX_FIELD_NUMBER: _ClassVar[int]
    SILHOUETTE_MIN_FIELD_NUMBER: _ClassVar[int]
    KMEANS_N_INIT_FIELD_NUMBER: _ClassVar[int]
    KMEANS_MAX_ITER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    SOLVER_FIELD_NUMBER: _ClassVar[int]
    APPROX_MIN_N_FIELD_NUMBER: _ClassVar[int]
    APPROX_NEIGHBORS_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    beta: float
    sigma_mode: str
    sigma: float
    sigma_floor: float
    k_mode: str
    k: int
    k_max: int
    silhouette_min: float
    kmeans_n_init: int
    kmeans_max_iter: int
    seed: int
    solver: str
    approx_min_n: int
    approx_neighbors: int
    method: str
    def __init__(self, beta: _Optional[float] = ..., sigma_mode: _Optional[str] = ..., sigma: _Optional[float] = ..., sigma_floor: _Optional[float] = ..., k_mode: _Optional[str] = ..., k: _Optional[int] = ..., k_max: _Optional[int] = ..., silhouette_min: _Optional[float] = ..., kmeans_n_init: _Optional[int] = ..., kmeans_max_iter: _Optional[int] = ..., seed: _Optional[int] = ..., solver: _Optional[str] = ..., approx_min_n: _Optional[int] = ..., approx_neighbors: _Optional[int] = ..., method: _Optional[str] = ...) -> None: ...

class DiversityGroup(_message.Message):
    __slots__ = ("images", "embeddings", "quality", "group_id")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    images: BytesList
    embeddings: FloatMatrix
    quality: FloatList
    group_id: str
    def __init__(self, images: _Optional[_Union[BytesList, _Mapping]] = ..., embeddings: _Optional[_Union[FloatMatrix, _Mapping]] = ..., quality: _Optional[_Union[FloatList, _Mapping]] = ..., group_id: _Optional[str] = ...) -> None: ...

class DiversityGroupResult(_message.Message):
    __slots__ = ("group_id", "size", "method", "bonus", "labels", "k", "sigma", "diversity", "intrinsic", "rewards", "advantages", "embeddings", "nn_distance", "advantage_weight")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    BONUS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    SIGMA_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    INTRINSIC_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    NN_DISTANCE_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    size: int
    method: str
    bonus: FloatList
    labels: IntList
    k: int
    sigma: float
    diversity: FloatList
    intrinsic: FloatList
    rewards: FloatList
    advantages: FloatList
    embeddings: FloatMatrix
    nn_distance: FloatList
    advantage_weight: FloatList
    def __init__(self, group_id: _Optional[str] = ..., size: _Optional[int] = ..., method: _Optional[str] = ..., bonus: _Optional[_Union[FloatList, _Mapping]] = ..., labels: _Optional[_Union[IntList, _Mapping]] = ..., k: _Optional[int] = ..., sigma: _Optional[float] = ..., diversity: _Optional[_Union[FloatList, _Mapping]] = ..., intrinsic: _Optional[_Union[FloatList, _Mapping]] = ..., rewards: _Optional[_Union[FloatList, _Mapping]] = ..., advantages: _Optional[_Union[FloatList, _Mapping]] = ..., embeddings: _Optional[_Union[FloatMatrix, _Mapping]] = ..., nn_distance: _Optional[_Union[FloatList, _Mapping]] = ..., advantage_weight: _Optional[_Union[FloatList, _Mapping]] = ...) -> None: ...

class DriftParams(_message.Message):
    __slots__ = ("lam", "gamma", "num_steps", "sigma_clip", "decoupled", "method")
    LAM_FIELD_NUMBER: _ClassVar[int]
    GAMMA_FIELD_NUMBER: _ClassVar[int]
    NUM_STEPS_FIELD_NUMBER: _ClassVar[int]
    SIGMA_CLIP_FIELD_NUMBER: _ClassVar[int]
    DECOUPLED_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    lam: float
    gamma: float
    num_steps: int
    sigma_clip: float
    decoupled: bool
    method: str
    def __init__(self, lam: _Optional[float] = ..., gamma: _Optional[float] = ..., num_steps: _Optional[int] = ..., sigma_clip: _Optional[float] = ..., decoupled: _Optional[bool] = ..., method: _Optional[str] = ...) -> None: ...

class GARDOParams(_message.Message):
    __slots__ = ("variant", "std_normalize", "method")
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    STD_NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    variant: str
    std_normalize: bool
    method: str
    def __init__(self, variant: _Optional[str] = ..., std_normalize: _Optional[bool] = ..., method: _Optional[str] = ...) -> None: ...

class AdvantageConfig(_message.Message):
    __slots__ = ("eps",)
    EPS_FIELD_NUMBER: _ClassVar[int]
    eps: float
    def __init__(self, eps: _Optional[float] = ...) -> None: ...

class DiversityRequest(_message.Message):
    __slots__ = ("groups", "diversegrpo", "drift", "gardo", "advantage", "return_embeddings", "request_id")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    DIVERSEGRPO_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    GARDO_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    RETURN_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[DiversityGroup]
    diversegrpo: DiverseGRPOParams
    drift: DriftParams
    gardo: GARDOParams
    advantage: AdvantageConfig
    return_embeddings: bool
    request_id: str
    def __init__(self, groups: _Optional[_Iterable[_Union[DiversityGroup, _Mapping]]] = ..., diversegrpo: _Optional[_Union[DiverseGRPOParams, _Mapping]] = ..., drift: _Optional[_Union[DriftParams, _Mapping]] = ..., gardo: _Optional[_Union[GARDOParams, _Mapping]] = ..., advantage: _Optional[_Union[AdvantageConfig, _Mapping]] = ..., return_embeddings: _Optional[bool] = ..., request_id: _Optional[str] = ...) -> None: ...

class DiversityResolvedParams(_message.Message):
    __slots__ = ("diversegrpo", "drift", "gardo", "advantage")
    DIVERSEGRPO_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    GARDO_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    diversegrpo: DiverseGRPOParams
    drift: DriftParams
    gardo: GARDOParams
    advantage: AdvantageConfig
    def __init__(self, diversegrpo: _Optional[_Union[DiverseGRPOParams, _Mapping]] = ..., drift: _Optional[_Union[DriftParams, _Mapping]] = ..., gardo: _Optional[_Union[GARDOParams, _Mapping]] = ..., advantage: _Optional[_Union[AdvantageConfig, _Mapping]] = ...) -> None: ...

class ModelCard(_message.Message):
    __slots__ = ("name", "kind", "source", "revision", "weights_hash", "profile", "device", "dtype", "options")
    NAME_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_HASH_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    OPTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    kind: str
    source: str
    revision: str
    weights_hash: str
    profile: str
    device: str
    dtype: str
    options: str
    def __init__(self, name: _Optional[str] = ..., kind: _Optional[str] = ..., source: _Optional[str] = ..., revision: _Optional[str] = ..., weights_hash: _Optional[str] = ..., profile: _Optional[str] = ..., device: _Optional[str] = ..., dtype: _Optional[str] = ..., options: _Optional[str] = ...) -> None: ...

class DiversityResponse(_message.Message):
    __slots__ = ("request_id", "profile", "warnings", "groups", "params", "models")
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ModelCard
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ModelCard, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    profile: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    groups: _containers.RepeatedCompositeFieldContainer[DiversityGroupResult]
    params: DiversityResolvedParams
    models: _containers.MessageMap[str, ModelCard]
    def __init__(self, request_id: _Optional[str] = ..., profile: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., groups: _Optional[_Iterable[_Union[DiversityGroupResult, _Mapping]]] = ..., params: _Optional[_Union[DiversityResolvedParams, _Mapping]] = ..., models: _Optional[_Mapping[str, ModelCard]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("images", "request_id")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    request_id: str
    def __init__(self, images: _Optional[_Iterable[bytes]] = ..., request_id: _Optional[str] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("request_id", "profile", "warnings", "embeddings", "dim", "model")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    profile: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    embeddings: _containers.RepeatedCompositeFieldContainer[FloatList]
    dim: int
    model: ModelCard
    def __init__(self, request_id: _Optional[str] = ..., profile: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., embeddings: _Optional[_Iterable[_Union[FloatList, _Mapping]]] = ..., dim: _Optional[int] = ..., model: _Optional[_Union[ModelCard, _Mapping]] = ...) -> None: ...

class ErrorDetail(_message.Message):
    __slots__ = ("loc", "msg", "type")
    LOC_FIELD_NUMBER: _ClassVar[int]
    MSG_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    loc: _containers.RepeatedCompositeFieldContainer[LocItem]
    msg: str
    type: str
    def __init__(self, loc: _Optional[_Iterable[_Union[LocItem, _Mapping]]] = ..., msg: _Optional[str] = ..., type: _Optional[str] = ...) -> None: ...

class ErrorInfo(_message.Message):
    __slots__ = ("kind", "message", "status", "group_index", "image_index", "valid", "details", "retry_after_s")
    KIND_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    GROUP_INDEX_FIELD_NUMBER: _ClassVar[int]
    IMAGE_INDEX_FIELD_NUMBER: _ClassVar[int]
    VALID_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    kind: str
    message: str
    status: int
    group_index: int
    image_index: int
    valid: StringList
    details: _containers.RepeatedCompositeFieldContainer[ErrorDetail]
    retry_after_s: float
    def __init__(self, kind: _Optional[str] = ..., message: _Optional[str] = ..., status: _Optional[int] = ..., group_index: _Optional[int] = ..., image_index: _Optional[int] = ..., valid: _Optional[_Union[StringList, _Mapping]] = ..., details: _Optional[_Iterable[_Union[ErrorDetail, _Mapping]]] = ..., retry_after_s: _Optional[float] = ...) -> None: ...

class ErrorResponse(_message.Message):
    __slots__ = ("error", "request_id")
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    error: ErrorInfo
    request_id: str
    def __init__(self, error: _Optional[_Union[ErrorInfo, _Mapping]] = ..., request_id: _Optional[str] = ...) -> None: ...

class HealthResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: str
    def __init__(self, status: _Optional[str] = ...) -> None: ...

class MetricsGroup(_message.Message):
    __slots__ = ("images", "embeddings", "group_id")
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    images: BytesList
    embeddings: FloatMatrix
    group_id: str
    def __init__(self, images: _Optional[_Union[BytesList, _Mapping]] = ..., embeddings: _Optional[_Union[FloatMatrix, _Mapping]] = ..., group_id: _Optional[str] = ...) -> None: ...

class MetricsRequest(_message.Message):
    __slots__ = ("groups", "reference", "recall_k", "request_id")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    RECALL_K_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[MetricsGroup]
    reference: MetricsGroupList
    recall_k: int
    request_id: str
    def __init__(self, groups: _Optional[_Iterable[_Union[MetricsGroup, _Mapping]]] = ..., reference: _Optional[_Union[MetricsGroupList, _Mapping]] = ..., recall_k: _Optional[int] = ..., request_id: _Optional[str] = ...) -> None: ...

class MetricsResponse(_message.Message):
    __slots__ = ("request_id", "profile", "warnings", "metrics", "params", "models")
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ModelCard
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ModelCard, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    profile: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    metrics: str
    params: str
    models: _containers.MessageMap[str, ModelCard]
    def __init__(self, request_id: _Optional[str] = ..., profile: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., metrics: _Optional[str] = ..., params: _Optional[str] = ..., models: _Optional[_Mapping[str, ModelCard]] = ...) -> None: ...

class NoDiversityParams(_message.Message):
    __slots__ = ("method",)
    METHOD_FIELD_NUMBER: _ClassVar[int]
    method: str
    def __init__(self, method: _Optional[str] = ...) -> None: ...

class RewardParams(_message.Message):
    __slots__ = ("quality", "diversegrpo", "drift", "none", "gardo", "advantage", "aggregation")
    class QualityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: float
        def __init__(self, key: _Optional[str] = ..., value: _Optional[float] = ...) -> None: ...
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    DIVERSEGRPO_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    GARDO_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    quality: _containers.ScalarMap[str, float]
    diversegrpo: DiverseGRPOParams
    drift: DriftParams
    none: NoDiversityParams
    gardo: GARDOParams
    advantage: AdvantageConfig
    aggregation: str
    def __init__(self, quality: _Optional[_Mapping[str, float]] = ..., diversegrpo: _Optional[_Union[DiverseGRPOParams, _Mapping]] = ..., drift: _Optional[_Union[DriftParams, _Mapping]] = ..., none: _Optional[_Union[NoDiversityParams, _Mapping]] = ..., gardo: _Optional[_Union[GARDOParams, _Mapping]] = ..., advantage: _Optional[_Union[AdvantageConfig, _Mapping]] = ..., aggregation: _Optional[str] = ...) -> None: ...

class ModelsResponse(_message.Message):
    __slots__ = ("request_id", "profile", "warnings", "scorers", "embedder", "defaults", "limits")
    class ScorersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ModelCard
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ModelCard, _Mapping]] = ...) -> None: ...
    class LimitsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    EMBEDDER_FIELD_NUMBER: _ClassVar[int]
    DEFAULTS_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    profile: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    scorers: _containers.MessageMap[str, ModelCard]
    embedder: ModelCard
    defaults: RewardParams
    limits: _containers.ScalarMap[str, int]
    def __init__(self, request_id: _Optional[str] = ..., profile: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., scorers: _Optional[_Mapping[str, ModelCard]] = ..., embedder: _Optional[_Union[ModelCard, _Mapping]] = ..., defaults: _Optional[_Union[RewardParams, _Mapping]] = ..., limits: _Optional[_Mapping[str, int]] = ...) -> None: ...

class ReadyResponse(_message.Message):
    __slots__ = ("status", "deployments")
    class DeploymentsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENTS_FIELD_NUMBER: _ClassVar[int]
    status: str
    deployments: _containers.ScalarMap[str, str]
    def __init__(self, status: _Optional[str] = ..., deployments: _Optional[_Mapping[str, str]] = ...) -> None: ...

class RewardGroup(_message.Message):
    __slots__ = ("prompt", "images", "group_id", "metadata")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    group_id: str
    metadata: str
    def __init__(self, prompt: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., group_id: _Optional[str] = ..., metadata: _Optional[str] = ...) -> None: ...

class RewardGroupResult(_message.Message):
    __slots__ = ("group_id", "size", "quality", "diversity", "rewards", "advantages")
    class QualityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FloatList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FloatList, _Mapping]] = ...) -> None: ...
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    DIVERSITY_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGES_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    size: int
    quality: _containers.MessageMap[str, FloatList]
    diversity: DiversityGroupResult
    rewards: _containers.RepeatedScalarFieldContainer[float]
    advantages: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, group_id: _Optional[str] = ..., size: _Optional[int] = ..., quality: _Optional[_Mapping[str, FloatList]] = ..., diversity: _Optional[_Union[DiversityGroupResult, _Mapping]] = ..., rewards: _Optional[_Iterable[float]] = ..., advantages: _Optional[_Iterable[float]] = ...) -> None: ...

class RewardsRequest(_message.Message):
    __slots__ = ("groups", "quality", "diversegrpo", "drift", "none", "gardo", "advantage", "return_embeddings", "request_id", "aggregation")
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    DIVERSEGRPO_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    GARDO_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    RETURN_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    groups: _containers.RepeatedCompositeFieldContainer[RewardGroup]
    quality: FloatMap
    diversegrpo: DiverseGRPOParams
    drift: DriftParams
    none: NoDiversityParams
    gardo: GARDOParams
    advantage: AdvantageConfig
    return_embeddings: bool
    request_id: str
    aggregation: str
    def __init__(self, groups: _Optional[_Iterable[_Union[RewardGroup, _Mapping]]] = ..., quality: _Optional[_Union[FloatMap, _Mapping]] = ..., diversegrpo: _Optional[_Union[DiverseGRPOParams, _Mapping]] = ..., drift: _Optional[_Union[DriftParams, _Mapping]] = ..., none: _Optional[_Union[NoDiversityParams, _Mapping]] = ..., gardo: _Optional[_Union[GARDOParams, _Mapping]] = ..., advantage: _Optional[_Union[AdvantageConfig, _Mapping]] = ..., return_embeddings: _Optional[bool] = ..., request_id: _Optional[str] = ..., aggregation: _Optional[str] = ...) -> None: ...

class RewardsResponse(_message.Message):
    __slots__ = ("request_id", "profile", "warnings", "groups", "models", "params")
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ModelCard
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ModelCard, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    profile: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    groups: _containers.RepeatedCompositeFieldContainer[RewardGroupResult]
    models: _containers.MessageMap[str, ModelCard]
    params: RewardParams
    def __init__(self, request_id: _Optional[str] = ..., profile: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., groups: _Optional[_Iterable[_Union[RewardGroupResult, _Mapping]]] = ..., models: _Optional[_Mapping[str, ModelCard]] = ..., params: _Optional[_Union[RewardParams, _Mapping]] = ...) -> None: ...

class ScoreParams(_message.Message):
    __slots__ = ("scorers",)
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    scorers: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, scorers: _Optional[_Iterable[str]] = ...) -> None: ...

class ScoreRequest(_message.Message):
    __slots__ = ("prompts", "images", "scorers", "request_id", "metadata")
    PROMPTS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    SCORERS_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    prompts: _containers.RepeatedScalarFieldContainer[str]
    images: _containers.RepeatedScalarFieldContainer[bytes]
    scorers: StringList
    request_id: str
    metadata: str
    def __init__(self, prompts: _Optional[_Iterable[str]] = ..., images: _Optional[_Iterable[bytes]] = ..., scorers: _Optional[_Union[StringList, _Mapping]] = ..., request_id: _Optional[str] = ..., metadata: _Optional[str] = ...) -> None: ...

class ScoreResponse(_message.Message):
    __slots__ = ("request_id", "profile", "warnings", "scores", "models", "params")
    class ScoresEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FloatList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FloatList, _Mapping]] = ...) -> None: ...
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ModelCard
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ModelCard, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    profile: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    scores: _containers.MessageMap[str, FloatList]
    models: _containers.MessageMap[str, ModelCard]
    params: ScoreParams
    def __init__(self, request_id: _Optional[str] = ..., profile: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., scores: _Optional[_Mapping[str, FloatList]] = ..., models: _Optional[_Mapping[str, ModelCard]] = ..., params: _Optional[_Union[ScoreParams, _Mapping]] = ...) -> None: ...

class AssembledGroup(_message.Message):
    __slots__ = ("sequence", "positions", "group_positions", "result")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    POSITIONS_FIELD_NUMBER: _ClassVar[int]
    GROUP_POSITIONS_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    positions: _containers.RepeatedScalarFieldContainer[int]
    group_positions: _containers.RepeatedScalarFieldContainer[int]
    result: RewardGroupResult
    def __init__(self, sequence: _Optional[int] = ..., positions: _Optional[_Iterable[int]] = ..., group_positions: _Optional[_Iterable[int]] = ..., result: _Optional[_Union[RewardGroupResult, _Mapping]] = ...) -> None: ...

class GroupSubmission(_message.Message):
    __slots__ = ("group_id", "prompt", "images", "group_size", "namespace", "quality", "diversegrpo", "drift", "none", "gardo", "advantage", "return_embeddings", "assembly_timeout_s", "request_id", "aggregation", "metadata")
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    GROUP_SIZE_FIELD_NUMBER: _ClassVar[int]
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    DIVERSEGRPO_FIELD_NUMBER: _ClassVar[int]
    DRIFT_FIELD_NUMBER: _ClassVar[int]
    NONE_FIELD_NUMBER: _ClassVar[int]
    GARDO_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGE_FIELD_NUMBER: _ClassVar[int]
    RETURN_EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    ASSEMBLY_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    AGGREGATION_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    group_id: str
    prompt: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    group_size: int
    namespace: str
    quality: FloatMap
    diversegrpo: DiverseGRPOParams
    drift: DriftParams
    none: NoDiversityParams
    gardo: GARDOParams
    advantage: AdvantageConfig
    return_embeddings: bool
    assembly_timeout_s: float
    request_id: str
    aggregation: str
    metadata: str
    def __init__(self, group_id: _Optional[str] = ..., prompt: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., group_size: _Optional[int] = ..., namespace: _Optional[str] = ..., quality: _Optional[_Union[FloatMap, _Mapping]] = ..., diversegrpo: _Optional[_Union[DiverseGRPOParams, _Mapping]] = ..., drift: _Optional[_Union[DriftParams, _Mapping]] = ..., none: _Optional[_Union[NoDiversityParams, _Mapping]] = ..., gardo: _Optional[_Union[GARDOParams, _Mapping]] = ..., advantage: _Optional[_Union[AdvantageConfig, _Mapping]] = ..., return_embeddings: _Optional[bool] = ..., assembly_timeout_s: _Optional[float] = ..., request_id: _Optional[str] = ..., aggregation: _Optional[str] = ..., metadata: _Optional[str] = ...) -> None: ...

class GroupSubmissionResult(_message.Message):
    __slots__ = ("request_id", "profile", "warnings", "group_id", "rewards", "advantages", "quality", "groups", "models", "params", "error")
    class QualityEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: FloatList
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[FloatList, _Mapping]] = ...) -> None: ...
    class ModelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: ModelCard
        def __init__(self, key: _Optional[str] = ..., value: _Optional[_Union[ModelCard, _Mapping]] = ...) -> None: ...
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    PROFILE_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    GROUP_ID_FIELD_NUMBER: _ClassVar[int]
    REWARDS_FIELD_NUMBER: _ClassVar[int]
    ADVANTAGES_FIELD_NUMBER: _ClassVar[int]
    QUALITY_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    profile: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    group_id: str
    rewards: _containers.RepeatedScalarFieldContainer[float]
    advantages: _containers.RepeatedScalarFieldContainer[float]
    quality: _containers.MessageMap[str, FloatList]
    groups: _containers.RepeatedCompositeFieldContainer[AssembledGroup]
    models: _containers.MessageMap[str, ModelCard]
    params: RewardParams
    error: ErrorInfo
    def __init__(self, request_id: _Optional[str] = ..., profile: _Optional[str] = ..., warnings: _Optional[_Iterable[str]] = ..., group_id: _Optional[str] = ..., rewards: _Optional[_Iterable[float]] = ..., advantages: _Optional[_Iterable[float]] = ..., quality: _Optional[_Mapping[str, FloatList]] = ..., groups: _Optional[_Iterable[_Union[AssembledGroup, _Mapping]]] = ..., models: _Optional[_Mapping[str, ModelCard]] = ..., params: _Optional[_Union[RewardParams, _Mapping]] = ..., error: _Optional[_Union[ErrorInfo, _Mapping]] = ...) -> None: ...
