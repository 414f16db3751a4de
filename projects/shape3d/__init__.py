"""Text -> 3D motif shapes (voxels -> meshes): see README.md in this folder."""
