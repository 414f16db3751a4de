"""pose's preparation alone (what ``tgm fit`` does in ``prepare_data`` anyway):

    python -m projects.pose.prepare --config configs/pose/default.yaml [--config more.yaml ...]

generates the default corpus (when configured), builds the vocabulary, the FastText model and embedding matrix
and the pose statistics, each only when its cache is missing.
"""

from common.prepare import main

if __name__ == "__main__":
    main()
