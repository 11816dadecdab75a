"""Settings of the query path: the search service (RAGTRACE_SEARCH_*), the LLM (RAGTRACE_LLM_*) and the
HTTP gateway (RAGTRACE_GATEWAY_*)."""

from __future__ import annotations

from pydantic import SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from ragtrace.query_contract import DEFAULT_TOP_K, ModeName

# The search service's name in gRPC health: SERVING while its index and embedding service answer.
SEARCH_SERVICE_HEALTH = "ragtrace.v1.SearchService"


class SearchSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_SEARCH_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 50061
    # gRPC address of the EmbeddingService; empty: embed in this process (loads the model here).
    embedding_target: str = "127.0.0.1:50062"
    embedding_timeout_s: float = 1.0  # a frozen embedding service is a 503 within about a second
    # For gRPC callers that leave a field unset; the limits are the query contract's (ragtrace/query_contract.py).
    default_top_k: int = DEFAULT_TOP_K
    default_mode: ModeName = "hybrid"
    default_alpha: float = 0.7  # hybrid: the vector ranking's weight in rank fusion (docs/evaluation.md)
    cache_ttl_s: int = 300
    embedding_cache_ttl_s: int = 86_400
    filter_candidates: int = 200  # with metadata filters, how many results are filtered down to top_k
    metrics_port: int = 9466


class LLMSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_LLM_", extra="ignore", frozen=True)

    # An OpenAI-compatible API such as vLLM's (e.g. http://vllm:8000/v1). Empty: extractive answers.
    base_url: str = ""
    model: str = ""
    api_key: SecretStr | None = None
    provider: str = "vllm"  # gen_ai.provider.name on the LLM span
    connect_timeout_s: float = 0.5
    first_token_timeout_s: float = 15.0
    timeout_s: float = 60.0
    default_max_tokens: int = 256
    max_context_tokens: int = 3000
    temperature: float = 0.1


class GatewaySettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RAGTRACE_GATEWAY_", extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = 8080
    search_target: str = "127.0.0.1:50061"
    search_timeout_s: float = 30.0
    max_body_bytes: int = 64 * 1024
    # The ingest API, asked for a document's status on the page's behalf (same origin for the browser).
    ingest_url: str = "http://127.0.0.1:8082"
    ingest_timeout_s: float = 1.0
