"""The wire schemas: what callers send and get back, and what crosses the runner hop.

Public (``/predict``, ``/model_info``): ``Instance``, ``PredictionPublic``,
``PredictResponse``, ``ModelInfo``. Internal (entry -> runner): ``KeyedRow`` in,
``KeyedResult`` out; both carry the caller's key and the id of the chunk the row
belongs to, so that equal keys from different requests in one micro-batch stay apart.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from bentoml import IODescriptor
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    PlainValidator,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    WithJsonSchema,
    model_validator,
)
from pydantic_core import PydanticCustomError

from keyed_serving.keys import (
    MAX_INTEGER_KEY,
    MAX_KEY_LENGTH,
    MIN_INTEGER_KEY,
    is_usable_key,
    key_problem,
)


def _check_key(value: object) -> str | int:
    problem = key_problem(value)
    if problem is not None:
        raise PydanticCustomError("invalid_key", "unusable key: {problem}", {"problem": problem})
    return value  # type: ignore[return-value]


# A key is echoed back exactly as sent: 1 stays 1 and "1" stays "1" (no coercion).
Key = Annotated[
    str | int,
    PlainValidator(_check_key),
    WithJsonSchema(
        {
            "anyOf": [
                {"type": "string", "minLength": 1, "maxLength": MAX_KEY_LENGTH},
                {"type": "integer", "minimum": MIN_INTEGER_KEY, "maximum": MAX_INTEGER_KEY},
            ],
            "description": "Your id for the instance: a non-empty string or an integer "
            "from -2^63 to 2^63-1 (send larger ids as strings).",
        }
    ),
]
# What a row holds for the model once validate.py has checked it against the model's types.
FeatureValue = StrictInt | StrictFloat | StrictStr | StrictBool | None
Prediction = StrictInt | StrictFloat | StrictStr | StrictBool
ErrorMode = Literal["reject", "per_instance"]

# On the wire any JSON value is taken, so that a wrong type is that instance's own error
# (with "errors": "per_instance") rather than a schema error that fails the whole request.
# The documented type is what the model can take.
WireFeatures = Annotated[
    dict[str, JsonValue],
    WithJsonSchema(
        {
            "type": "object",
            "additionalProperties": {"type": ["number", "string", "null"]},
            "description": "Feature values by name: numbers for number features, strings for "
            "category features, null where unknown. See /model_info.",
        }
    ),
]


class Instance(BaseModel):
    """One thing to predict: the caller's key and the features by name."""

    model_config = ConfigDict(extra="forbid")

    key: Key = Field(description="Your id for this instance, echoed back with its prediction.")
    features: WireFeatures

    @model_validator(mode="wrap")
    @classmethod
    def _errors_name_the_key(cls, data: Any, handler: Any) -> Instance:
        # Pydantic locates errors by list index; callers think in keys. When the key
        # itself is usable, say it in the message so every 4xx names key and field.
        try:
            return handler(data)  # type: ignore[no-any-return]
        except ValidationError as exc:
            key = data.get("key") if isinstance(data, dict) else None
            if not is_usable_key(key):
                raise
            first = exc.errors()[0]
            field, reason = ".".join(map(str, first["loc"])) or "instance", first["msg"]
            raise PydanticCustomError(
                "invalid_instance",
                "instance with key {key}: field {field}: {reason}",
                {"key": repr(key), "field": repr(field), "reason": reason},
            ) from None


def _is_none(value: object) -> bool:
    # An answer leaves out a field that does not apply rather than sending null: regressors
    # have no probabilities, and BentoML's own client fails on a null where an array may be.
    return value is None


class PredictionPublic(BaseModel):
    key: Key
    prediction: Prediction
    probabilities: dict[str, float] | None = Field(
        default=None,
        exclude_if=_is_none,
        description="Classifiers only: probability per class label; they sum to 1.",
    )


class InstanceError(BaseModel):
    code: str = Field(
        description="missing_feature, unknown_feature, wrong_type, out_of_range, model_error"
    )
    message: str = Field(description="What is wrong, naming the key and the field.")


class FailedInstance(BaseModel):
    """An instance that was not predicted (only with "errors": "per_instance")."""

    key: Key
    error: InstanceError


class Summary(BaseModel):
    received: int
    predicted: int
    failed: int


class PredictResponse(BaseModel):
    model: str = Field(description="The model that answered, name:version.")
    predictions: list[PredictionPublic | FailedInstance] = Field(
        description="One entry per instance, in request order, each with its instance's key: "
        "a prediction, or (with errors=per_instance) the reason it has none."
    )
    summary: Summary


class FeatureInfo(BaseModel):
    name: str
    type: Literal["number", "category", "datetime"] = Field(
        description="number: a JSON number or null; category: a string or null; datetime: "
        "an ISO 8601 date-time string (2024-01-05, 2024-01-05T10:30:00, with an offset when "
        "the model takes time zones) or null."
    )
    categories: list[str] | None = Field(
        default=None,
        exclude_if=_is_none,
        description="Categories seen in training (when at most 50); others are accepted too.",
    )
    fitted_categories: list[str | int | float | bool] | None = Field(
        default=None,
        exclude_if=_is_none,
        description="For a model that takes this feature natively as a categorical (XGBoost, "
        "LightGBM): its categories, in the order it was fitted with. A value is sent as its "
        "text; a value that is none of them is missing to the model, as on its own frame.",
    )
    missing: Literal["none"] | None = Field(
        default=None,
        exclude_if=_is_none,
        description="How the model takes a missing value of this feature where that is not "
        "NaN: none, Python None (its encoder learned None, not NaN, as a category). A missing "
        "value is still sent as null or an empty cell.",
    )
    dtype: str | None = Field(
        default=None,
        exclude_if=_is_none,
        description="A datetime feature's pandas dtype, as the model was fitted with it "
        "(datetime64[ns], or datetime64[ns, UTC] for a model that takes time zones).",
    )


class Score(BaseModel):
    metric: str
    value: float


class ModelInfo(BaseModel):
    model: str = Field(description="name:version")
    task: Literal["classification", "regression"]
    target: str | None = Field(
        default=None, exclude_if=_is_none, description="The column the model predicts."
    )
    features: list[FeatureInfo]
    classes: list[str | int | float | bool] | None = Field(default=None, exclude_if=_is_none)
    holdout_score: Score | None = Field(
        default=None,
        exclude_if=_is_none,
        description="Measured on held-out rows by train.py, or on the sample by keyed-import "
        "(metric ending in _on_import_sample); absent where nobody measured it.",
    )
    max_instances: int = Field(description="The most instances one /predict request may hold.")


class ErrorDetail(BaseModel):
    type: str = Field(description="Machine-readable code, e.g. missing_feature, duplicate_key.")
    msg: str = Field(description="What is wrong, naming the key and the field.")
    loc: list[str | int] = Field(description="Where in the body: ['instances', index, ...].")
    key: Key | None = Field(default=None, exclude_if=_is_none)
    field: str | None = Field(default=None, exclude_if=_is_none)


class ErrorResponse(BaseModel):
    error: str
    detail: list[ErrorDetail] = Field(default_factory=list)


# ---- columnar bulk format -------------------------------------------------------------

# The columnar answer has a null where a key has no prediction (errors="per_instance").
NullablePrediction = Prediction | None


class ColumnarResponse(BaseModel):
    """The answer to a columnar request: one position per key sent, in request order."""

    model: str = Field(description="The model that answered, name:version.")
    keys: list[Key] = Field(description="The keys as sent, in request order.")
    predictions: list[NullablePrediction] = Field(
        description="The prediction at the same position as its key; null where the key "
        "has an entry in errors."
    )
    probabilities: dict[str, list[float | None]] | None = Field(
        default=None,
        exclude_if=_is_none,
        description="Classifiers only: one column per class label, positions as keys.",
    )
    errors: list[FailedInstance] = Field(
        default_factory=list, description="Keys without a prediction, and why."
    )
    summary: Summary


class PredictRequest(IODescriptor):
    """The body of /predict: rows (``instances``) or columns (``keys`` + ``columns``).

    Documents the request; the entry decodes the body itself (orjson) and validates it in
    ``keyed_serving.serving.validate``, which names the key and the field of every problem. BentoML
    would otherwise validate every instance with pydantic before the API runs, then again
    in our own checks: measured, that was most of a 10,000-row request's time.
    """

    instances: list[Instance] | None = Field(
        default=None,
        description="Row format: [{key, features: {name: value}}]. Send this or keys+columns.",
    )
    keys: list[Key] | None = Field(
        default=None, description="Columnar format: the keys, one per row."
    )
    columns: dict[str, list[JsonValue]] | None = Field(
        default=None,
        description="Columnar format: one list per feature, each as long as keys. "
        "Answered in kind (ColumnarResponse).",
    )
    errors: ErrorMode = Field(
        default="reject",
        description='"reject": any invalid instance fails the request (400/422); '
        '"per_instance": such instances are answered with their error, the others predicted.',
    )

    @classmethod
    async def from_http_request(cls, request: Any, serde: Any) -> PredictRequest:
        # The body is left for the API to decode (see the class docstring).
        return cls.model_construct()


# ---- entry -> runner hop -------------------------------------------------------------
#
# Rows cross the hop as columns, a block per chunk: NumPy arrays that pickle as a few
# buffers, not a pydantic object per row. Measured at 10,000 rows: per-row objects cost
# more than the model, and so did pydantic walking typed lists item by item (validating on
# one side, dumping on the other). Fields are typed ``Any`` so that pydantic hands the arrays
# through untouched; the entry has validated the values, and the keys are checked on the
# way back against the ones sent.

Array = Annotated[Any, WithJsonSchema({"type": "array"})]


class KeyedBlock(BaseModel):
    """One chunk of one request inside a runner micro-batch: its keys (a
    ``keyed_serving.keys.KeyColumn``: one buffer over the hop, each key's type kept) and
    one array per feature in the model's feature order (float64 for numbers, object for
    categories). ``chunk`` is unique to this chunk, so equal keys of different requests in
    one micro-batch stay apart. ``model`` is the version (name:version) the entry answers
    for: a runner serving another version refuses the block."""

    chunk: str
    model: str
    keys: Array
    columns: list[Array]

    def __len__(self) -> int:
        return len(self.keys)


class BlockError(BaseModel):
    row: int = Field(description="Position of the row in its block.")
    error: InstanceError


class BlockResult(BaseModel):
    """A block's results: the chunk id and keys of the block it answers, the model version
    that predicted them, a prediction per row (None where the model raised on that row
    alone, see errors) and, for classifiers, a row of class probabilities per row."""

    chunk: str
    model: str
    keys: Array
    predictions: Array
    probabilities: Array | None = None
    errors: list[BlockError] = Field(default_factory=list)


# ---- Open Inference Protocol (V2) ---------------------------------------------------------


class InferenceTensor(BaseModel):
    """A tensor of the Open Inference Protocol: one element per instance."""

    name: str = Field(description='"key", a feature name, or an output name.')
    datatype: str = Field(description="BYTES, FP64, FP32, INT64, INT32, ...")
    shape: list[int] = Field(description="[N] or [N, 1] (probabilities: [N, classes]).")
    parameters: dict[str, JsonValue] | None = Field(
        default=None, description="binary_data_size when the data follows the JSON header."
    )
    data: list[JsonValue] | None = Field(default=None, description="Row-major elements.")


class InferenceOutputRequest(BaseModel):
    name: str = Field(description="key, prediction, probabilities or error")
    parameters: dict[str, JsonValue] | None = Field(
        default=None, description='{"binary_data": true} to have it after the JSON header.'
    )


class InferenceRequest(IODescriptor):
    """An Open Inference Protocol (KServe V2) inference request with keys. With the binary
    tensor data extension the JSON header is followed by the inputs' bytes
    (Inference-Header-Content-Length says where the JSON ends). Documents the request; the
    API decodes the body itself (keyed_serving.serving.v2)."""

    id: str | None = Field(default=None, description="Echoed in the answer.")
    parameters: dict[str, JsonValue] | None = Field(
        default=None,
        description='{"errors": "reject" | "per_instance", "binary_data_output": bool}',
    )
    inputs: list[InferenceTensor] = Field(
        default_factory=list, description='"key" and one input per feature (GET the model).'
    )
    outputs: list[InferenceOutputRequest] | None = Field(
        default=None, description="The outputs to answer; all when absent."
    )

    @classmethod
    async def from_http_request(cls, request: Any, serde: Any) -> InferenceRequest:
        return cls.model_construct()  # the API reads the body (see the class docstring)


class InferenceResponse(BaseModel):
    model_name: str
    model_version: str
    id: str | None = Field(default=None, exclude_if=_is_none)
    parameters: dict[str, JsonValue] | None = Field(
        default=None, description="received, predicted and failed counts."
    )
    outputs: list[InferenceTensor]
