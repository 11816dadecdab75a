"""The query contract, defined once: what a search may ask (limits, modes, filters) and what its answer is.

`SearchQuery` is both the HTTP gateway's request body and the search service's validation of a gRPC
`SearchRequest` (`SearchQuery.from_proto`), so both refuse the same values with the same message (`field:
problem`, naming the limit): 422 over HTTP, INVALID_ARGUMENT over gRPC. `SearchResult` is the gateway's JSON,
read from the proto response message (`SearchResult.from_proto`) and published in the OpenAPI description.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal, Self

from google.protobuf import json_format
from google.protobuf.message import Message
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StringConstraints,
    ValidationError,
)

from ragtrace.errors import InvalidInput, field_errors
from ragtrace.schemas import Namespace, Text, encodable
from ragtrace.v1 import search_pb2

MAX_QUERY_CHARS = 2000
MAX_TOP_K = 100
DEFAULT_TOP_K = 5
MAX_GENERATED_TOKENS = 4096

ModeName = Literal["vector", "keyword", "hybrid"]
MODES: dict[ModeName, search_pb2.SearchMode] = {
    "vector": search_pb2.SEARCH_MODE_VECTOR,
    "keyword": search_pb2.SEARCH_MODE_KEYWORD,
    "hybrid": search_pb2.SEARCH_MODE_HYBRID,
}
MODE_NAMES: dict[int, ModeName] = {value: name for name, value in MODES.items()}

QueryText = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_CHARS), AfterValidator(encodable)
]


def _whole_number(value: Any) -> Any:
    """JSON Schema's `integer` is any number without a fraction (89.0 too): take it as the integer it is."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


# Strict: a JSON boolean or string is not a number here, as the OpenAPI document's types say.
TopK = Annotated[StrictInt, Field(ge=1, le=MAX_TOP_K), BeforeValidator(_whole_number)]
Alpha = Annotated[StrictFloat, Field(ge=0.0, le=1.0, description="hybrid: the vector ranking's weight, 0 to 1")]
MaxTokens = Annotated[StrictInt, Field(ge=1, le=MAX_GENERATED_TOKENS), BeforeValidator(_whole_number)]
FilterKey = Annotated[str, StringConstraints(min_length=1), AfterValidator(encodable)]


@dataclass(frozen=True)
class SearchDefaults:
    """What the search service fills in for a gRPC request that leaves a field unset (0, UNSPECIFIED)."""

    top_k: int
    mode: ModeName
    alpha: float
    max_tokens: int


class SearchQuery(BaseModel):
    """A search: the body of POST /api/search and, through `from_proto`, the gRPC request's validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    query: QueryText
    namespace: Namespace = "default"
    top_k: TopK = DEFAULT_TOP_K
    mode: ModeName = "hybrid"
    alpha: Alpha | None = None
    filters: dict[FilterKey, Text] = Field(default_factory=dict, description="equality on documents' metadata")
    generate: StrictBool = True
    max_tokens: MaxTokens | None = None

    def to_proto(self) -> search_pb2.SearchRequest:
        request = search_pb2.SearchRequest(
            query=self.query,
            namespace=self.namespace,
            top_k=self.top_k,
            mode=MODES[self.mode],
            filters=self.filters,
            generate=self.generate,
            max_tokens=self.max_tokens or 0,
        )
        if self.alpha is not None:
            request.alpha = self.alpha
        return request


class ResolvedQuery(SearchQuery):
    """A validated gRPC request with the service's defaults filled in."""

    alpha: Alpha
    max_tokens: MaxTokens

    @classmethod
    def from_proto(cls, request: search_pb2.SearchRequest, defaults: SearchDefaults) -> ResolvedQuery:
        """The request checked by the HTTP body's rules; InvalidInput names every problem."""
        fields: dict[str, Any] = {
            "query": request.query,
            "namespace": request.namespace or "default",
            "top_k": request.top_k or defaults.top_k,
            "mode": MODE_NAMES.get(request.mode, request.mode) if request.mode else defaults.mode,
            "alpha": request.alpha if request.HasField("alpha") else defaults.alpha,
            "filters": dict(request.filters),
            "generate": request.generate,
            "max_tokens": request.max_tokens or defaults.max_tokens,
        }
        try:
            return cls.model_validate(fields)
        except ValidationError as error:
            raise InvalidInput(field_errors(error.errors())) from None


# The answer ------------------------------------------------------------------------------------------------


def _message_dict(message: Message) -> dict[str, Any]:
    """A proto message as JSON-ready data: field names as in the proto, every field present (0, "", false
    included). Every integer in search.proto is 32-bit, so none arrives as a string."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


def _rounded(digits: int) -> AfterValidator:
    return AfterValidator(lambda value: round(value, digits))


def _mode_name(value: Any) -> Any:
    """SearchMode as the proto JSON names it (SEARCH_MODE_VECTOR) → its name in the API (vector)."""
    if isinstance(value, str) and value.startswith("SEARCH_MODE_"):
        name = value.removeprefix("SEARCH_MODE_").lower()
        return name if name in MODES else "hybrid"  # UNSPECIFIED means hybrid
    return value


_INTEGER_POSITIONS = ("chunk_no", "start", "end")


def _chunk_positions(metadata: dict[str, Any]) -> dict[str, Any]:
    """protobuf's Struct keeps every number as a double; a chunk's positions are integers."""
    return {
        key: int(value) if key in _INTEGER_POSITIONS and isinstance(value, float) else value
        for key, value in metadata.items()
    }


class _FromProto(BaseModel):
    @classmethod
    def from_proto(cls, message: Message) -> Self:
        return cls.model_validate(_message_dict(message))


class SearchTimings(_FromProto):
    embed: Annotated[float, _rounded(2)] = 0.0
    search: Annotated[float, _rounded(2)] = 0.0
    generate: Annotated[float, _rounded(2)] = 0.0
    total: Annotated[float, _rounded(2)] = 0.0


class SearchMetadata(_FromProto):
    trace_id: str = ""
    cache_hit: bool = False
    mode: Annotated[ModeName, BeforeValidator(_mode_name)] = "hybrid"
    top_k: int = 0
    alpha: Annotated[float, _rounded(4)] = 0.0
    namespace: str = ""
    num_sources: int = 0
    generator: str = Field("", description='"llm", "extractive" or "none"')
    generator_reason: str = Field("", description='why not "llm", when it is not')
    model: str = ""
    input_tokens: int = 0
    output_tokens: int = 0
    time_to_first_token_ms: Annotated[float, _rounded(2)] = 0.0
    timings_ms: SearchTimings = Field(default_factory=SearchTimings)


class SourceProvenance(_FromProto):
    """How a source's document got into the index (empty for one indexed before this was kept)."""

    trace_id: str = Field("", description="the trace of the request that ingested the document (W3C hex)")
    span_id: str = Field("", description="that request's span: the retrieval span links to it")
    indexed_at: str = Field("", description="when the index write happened, ISO 8601 UTC")
    model: str = Field("", description="the embedding model of its vectors")
    pipeline_version: str = Field("", description="ragtrace's version in the indexer that wrote it")


class SearchSource(_FromProto):
    id: str = Field(description="the chunk's id")
    document_id: str
    content: str
    score: Annotated[float, _rounded(6)]
    metadata: Annotated[dict[str, Any], AfterValidator(_chunk_positions)] = Field(
        default_factory=dict, description="the document's own metadata, plus chunk_no, start and end"
    )
    provenance: SourceProvenance = Field(default_factory=SourceProvenance)


class SearchResult(_FromProto):
    """The answer of POST /api/search: the proto SearchResponse as JSON."""

    answer: str = ""
    sources: list[SearchSource] = Field(default_factory=list)
    metadata: SearchMetadata = Field(default_factory=SearchMetadata)
