"""diffusion's preparation alone (what ``tgm fit/validate/test`` do in ``prepare_data`` anyway):

    python -m projects.diffusion.prepare --config configs/diffusion/default.yaml [--config overlay.yaml ...]

renders the generated data (if that is the source) and trains + caches the judge, each only when missing.
"""

from common.prepare import main

if __name__ == "__main__":
    main()
