"""The room camera: backends, the shared capture loop and the picture-health analyser."""
