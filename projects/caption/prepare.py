"""caption's preparation alone (what ``tgm fit`` does in ``prepare_data`` anyway):

    python -m projects.caption.prepare --config configs/caption/default.yaml [--config more.yaml ...]

generates the default set, builds (and pre-trains) the tiny CLIP, trains the BPE tokenizer and computes the CLIP
feature caches, each only when its cache is missing. ``build_data`` / ``build_model`` serve scripts.
"""

from common.prepare import build_data, build_model, main

__all__ = ["build_data", "build_model", "main"]

if __name__ == "__main__":
    main()
