"""Point-cloud completion: PDR-style conditional diffusion from a partial scan to the complete shape."""
