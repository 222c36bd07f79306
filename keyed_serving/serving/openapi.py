"""Makes the served OpenAPI document say what the API really takes and gives.

BentoML generates ``/docs.json`` from the Python signatures, which know nothing of the
model: features are "any object", and the error answers are BentoML's generic ones.
Here the document gets the served model's feature names and types, every status the
entry answers with its body shape and ``Retry-After`` where it applies, and the GET alias
of ``/model_info``. A fuzzer (schemathesis, in the tests) then checks the service
against a document that means something.
"""

from __future__ import annotations

import copy
from typing import Any

from keyed_serving.formats import MEDIA_TYPES
from keyed_serving.model.spec import ModelSpec
from keyed_serving.schemas import ErrorResponse
from keyed_serving.serving.v2 import key_input, model_name, model_version

ERROR_REF = "#/components/schemas/ErrorResponse"
RETRY_AFTER = {
    "Retry-After": {
        "description": "Seconds to wait before sending the same request again.",
        "schema": {"type": "integer"},
        "required": True,
    }
}
PREDICT_ERRORS = {
    "400": ("Invalid request: each problem names the key and the field at fault.", False),
    "401": ("Missing or wrong bearer token (when the server has one configured).", False),
    "413": ("Request body larger than the server accepts.", False),
    "415": ("Body is not application/json.", False),
    "422": ("The model could not predict some instances (errors=reject).", False),
    "429": ("Too many requests in flight on this worker.", True),
    "500": ("Internal error: the results did not match the keys sent (counted, logged).", False),
    "503": ("The model runner stayed overloaded or unavailable; retry later.", True),
}
LABELS_ERRORS = {
    "400": ('The body is not {"labels": [...]} (or holds too many labels).', False),
    "401": PREDICT_ERRORS["401"],
    "404": ("The server keeps no capture (started without KEYED_CAPTURE_DIR).", False),
    "413": PREDICT_ERRORS["413"],
    "415": PREDICT_ERRORS["415"],
    "429": PREDICT_ERRORS["429"],
    "503": ("The labels could not be written; none was kept, retry later.", True),
}
FILE_MEDIA_TYPES = tuple(MEDIA_TYPES.values())
TASK_STATUSES = ["pending", "in_progress", "completed", "failed", "canceled"]
FILE_ERRORS = {
    "400": (
        "The file cannot be scored: unknown format, no key column, duplicate or empty "
        "keys, missing features.",
        False,
    ),
    "401": PREDICT_ERRORS["401"],
    "411": ("Uploads need a Content-Length.", False),
    "413": ("File larger than the server accepts.", False),
    "415": ("Not multipart/form-data.", False),
    "429": PREDICT_ERRORS["429"],
    "500": PREDICT_ERRORS["500"],
    "503": PREDICT_ERRORS["503"],
}


V2_INFER_PATHS = (
    "/v2/models/{model_name}/infer",
    "/v2/models/{model_name}/versions/{model_version}/infer",
)
V2_ERRORS = {
    **PREDICT_ERRORS,
    "400": ("Invalid request: names the input, or the key and the feature, at fault.", False),
    "404": ("No such model or version here (see GET /v2/models/{model_name}).", False),
    "415": ("Body neither application/json nor application/octet-stream.", False),
}


def _v2_get(
    summary: str, schema: dict[str, Any] | None, statuses: tuple[str, ...]
) -> dict[str, Any]:
    """A GET route's document; ``schema`` None: a probe, answered as BentoML's /readyz is."""
    anything: dict[str, Any] = {"application/json": {"schema": {}}, "text/plain": {"schema": {}}}
    ok = anything if schema is None else {"application/json": {"schema": schema}}
    return {
        "summary": summary,
        "responses": {
            "200": {"description": "OK", "content": ok},
            **{
                status: {
                    "description": V2_ERRORS.get(status, ("Not ready.", True))[0],
                    "content": anything,
                }
                for status in statuses
            },
        },
    }


def v2_get_paths() -> dict[str, Any]:
    """The Open Inference Protocol's GET routes (served by ``http.OpenInferenceRoutes``)."""
    name = {"name": "model_name", "in": "path", "required": True, "schema": {"type": "string"}}
    version = {**name, "name": "model_version"}
    metadata = {
        "type": "object",
        "required": ["name", "versions", "platform", "inputs", "outputs"],
    }
    ready = None
    paths: dict[str, Any] = {
        "/v2": {"get": _v2_get("Server metadata", {"type": "object"}, ())},
        "/v2/health/live": {"get": _v2_get("Live", ready, ("503",))},
        "/v2/health/ready": {"get": _v2_get("Ready: the model runner answers", ready, ("503",))},
    }
    for path, params in (
        ("/v2/models/{model_name}", [name]),
        ("/v2/models/{model_name}/versions/{model_version}", [name, version]),
    ):
        paths[path] = {
            "get": _v2_get("Model metadata: inputs, outputs, classes", metadata, ("404",))
        }
        paths[f"{path}/ready"] = {"get": _v2_get("Model ready", ready, ("404", "503"))}
        paths[path]["get"]["parameters"] = paths[f"{path}/ready"]["get"]["parameters"] = params
    return paths


def feature_schema(spec: ModelSpec) -> dict[str, Any]:
    properties = {}
    for feature in spec.features:
        # OpenAPI 3.0 (what BentoML writes) says "nullable", not a list of types.
        if feature.type == "number":
            properties[feature.name] = {
                "type": "number",
                "nullable": True,
                "minimum": -3.4e38,
                "maximum": 3.4e38,
            }
        else:
            entry: dict[str, Any] = {"type": "string", "nullable": True}
            if feature.categories:
                entry["examples"] = feature.categories[:5]
            properties[feature.name] = entry
    return {
        "type": "object",
        "description": "Every feature of the model, by name: numbers for number features, "
        "strings for category features (unseen categories are taken), null where unknown.",
        "properties": properties,
        "required": spec.feature_names,
        "additionalProperties": False,
    }


def page_description(spec: ModelSpec) -> str:
    """The API page's text (OpenAPI ``info.description``, markdown): the keyed contract."""
    features = ", ".join(f"`{f.name}` ({f.type})" for f in spec.features)
    return f"""Serves **{spec.tag}** ({spec.task}; features {features}) so that every \
prediction comes back paired with the key its caller sent, however the server merged, \
split or retried the work. Keys are unique within a request: non-empty strings of at most \
256 characters, or integers from -2^63 to 2^63-1.

* **Rows**: `POST /predict` with `{{"instances": [{{"key", "features": {{...}}}}]}}`: one \
entry per instance, in request order, each with its key.
* **Columns** (bulk): `POST /predict` with `{{"keys": [...], "columns": {{feature: [...]}}}}`: \
answered in kind.
* **Open Inference Protocol (KServe V2)**: `POST /v2/models/{model_name(spec)}/infer` with \
an input `{key_input(spec)}` (the key) beside one input per feature; tritonclient works \
unchanged (binary tensors too).
* **Files**: `POST /predict_file` (CSV, Parquet, JSON Lines) answers the scored file.
* **Labels**: `POST /labels` with `{{"labels": [{{"key", "label", "time", "request_id"}}]}}` \
keeps what really happened beside the captured predictions (with `KEYED_CAPTURE_DIR`), for \
`keyed-evaluate`.

`"errors": "per_instance"` answers each bad instance with its own error and predicts the \
rest; by default any bad instance rejects the request with a 400 naming the key and the \
field. 429/503 carry `Retry-After`. What the model takes: `GET /model_info`. The user's \
guide: [README](./readme)."""


def refine_openapi(document: dict[str, Any], spec: ModelSpec) -> dict[str, Any]:
    doc = copy.deepcopy(document)
    # BentoML's template names the service class and "dev", with its own help links.
    doc["info"] = {
        **{k: v for k, v in doc.get("info", {}).items() if k != "contact"},
        "title": f"Keyed prediction: {model_name(spec)}",
        "version": model_version(spec),
        "description": page_description(spec),
    }
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    error_schema = ErrorResponse.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas.update(error_schema.pop("$defs", {}))
    schemas["ErrorResponse"] = error_schema
    if "Instance" in schemas:
        schemas["Instance"]["properties"]["features"] = feature_schema(spec)

    paths = doc.setdefault("paths", {})
    paths.update(v2_get_paths())
    scored = [("/predict", PREDICT_ERRORS), *((path, V2_ERRORS) for path in V2_INFER_PATHS)] + [
        (path, FILE_ERRORS)
        for path in ("/predict_file", "/predict_file_task", "/predict_file_task/submit")
    ]
    scored.append(("/labels", LABELS_ERRORS))
    for path, statuses in scored:
        if path not in paths or "post" not in paths[path]:
            continue
        responses = paths[path]["post"]["responses"]
        responses.pop("404", None)
        if path in V2_INFER_PATHS:  # binary outputs: the JSON header, then their bytes
            responses["200"]["content"]["application/octet-stream"] = {
                "schema": {"type": "string", "format": "binary"}
            }
        for status, (description, retry) in statuses.items():
            response: dict[str, Any] = {
                "description": description,
                "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
            }
            if retry:
                response["headers"] = RETRY_AFTER
            responses[status] = response
    scored_file = {
        "description": "The scored table, in the format of the file sent.",
        "content": {
            media: {"schema": {"type": "string", "format": "binary"}} for media in FILE_MEDIA_TYPES
        },
    }
    for path, method in (
        ("/predict_file", "post"),
        ("/predict_file_task", "post"),
        ("/predict_file_task/get", "get"),
    ):
        if method in paths.get(path, {}):
            paths[path][method]["responses"]["200"] = copy.deepcopy(scored_file)
    if "TaskStatusResponse" in schemas:
        # What BentoML's task routes really answer (its generated schema asks for fields
        # and status names they do not send).
        schemas["TaskStatusResponse"] = {
            "type": "object",
            "title": "TaskStatusResponse",
            "required": ["task_id", "status"],
            "properties": {
                "task_id": {"type": "string"},
                "status": {"type": "string", "enum": TASK_STATUSES},
                "created_at": {"type": "string", "nullable": True},
                "executed_at": {"type": "string", "nullable": True},
            },
        }
    if "/model_info" in paths:
        post = paths["/model_info"]["post"]
        for status in ("400", "404", "500"):
            post["responses"].pop(status, None)
        post["responses"]["401"] = {
            "description": PREDICT_ERRORS["401"][0],
            "content": {"application/json": {"schema": {"$ref": ERROR_REF}}},
        }
        post["requestBody"]["required"] = False
        get = copy.deepcopy(post)
        get.pop("requestBody", None)
        get["operationId"] = post.get("operationId", "model_info") + "_get"
        paths["/model_info"]["get"] = get
    return doc
