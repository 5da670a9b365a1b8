"""Beyond one process: a Triton model repository, Ray Serve online serving, Ray Data batch."""
