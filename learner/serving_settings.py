"""Settings of the embedded policy server (``python -m learner serve``), read once in its entry point."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from proxy.settings import CommonSettings


class ServeSettings(CommonSettings):
    """``NEXTSTATE_*`` environment variables of the policy server; tests pass keyword arguments."""

    base_model: str = Field(default="builtin:tiny-chat", description="builtin:tiny-chat, builtin:smollm2-135m, a local HF directory, or a cached hub id.")
    served_model_name: str | None = Field(default=None, description="Name of the base model in the API; default: 'tiny-chat' / 'smollm2-135m' for the built-in models, else base_model.")
    serve_host: str = Field(default="127.0.0.1", description="Bind address. Keep it private: the LoRA endpoints are control-plane only.")
    serve_port: int = Field(default=8000, description="Port (vLLM's default).")
    device: str | None = Field(default=None, description="cpu, cuda, cuda:1, ...; unset = CUDA when available.")
    dtype: str | None = Field(default=None, description="float32, bfloat16, ...; unset = bfloat16 on CUDA, float32 on CPU.")
    max_loras: int = Field(default=4, ge=1, description="Adapters materialised at once (stable + canary + draining of the scopes answering together); others stay registered and load on their next request.")
    max_num_seqs: int = Field(default=8, ge=1, description="Requests decoded concurrently (interleaved token by token).")
    max_queue: int = Field(default=64, ge=0, description="Requests waiting beyond max_num_seqs; more get 503 with Retry-After.")
    max_model_len: int | None = Field(default=None, description="Context length; unset = the model's max_position_embeddings.")
    torch_threads: int | None = Field(default=None, ge=1, description="CPU threads for torch in `serve`; unset = 1 for builtin:tiny-chat (its matrices are too small to split), else torch's default.")
    adapters_dir: Path | None = Field(default=None, description="The only directory adapters are loaded from (the registry's store; same variable as the registry's); unset = <home>/adapters.")
    default_max_tokens: int = Field(default=256, ge=1, description="max_tokens when a request sets none (capped by the context).")

    def adapters_path(self) -> Path:
        return (self.adapters_dir or self.home_dir() / "adapters").expanduser()
