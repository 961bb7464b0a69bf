"""The Docker container backend: one container per instance, on the docker SDK."""
