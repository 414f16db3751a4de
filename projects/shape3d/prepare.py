"""shape3d's preparation alone (what ``tgm fit`` does in ``prepare_data`` anyway):

    python -m projects.shape3d.prepare --config configs/shape3d/default.yaml [--config more.yaml ...]

writes the generated motif set (when ``data_dir`` is null), the tiny text encoder's tokenizer and the prepared
splits (every mesh read, checked, sampled and voxelised once; ``setup`` then only memory-maps them).
"""

from common.prepare import main

if __name__ == "__main__":
    main()
