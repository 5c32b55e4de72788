"""Built-in iterative defenders: per-image optimization against a surrogate diffusion model."""
