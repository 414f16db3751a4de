"""EMNIST character diffusion: diffusers UNet2DModel + DDPM training in Lightning, classifier-feature FID/IS."""
