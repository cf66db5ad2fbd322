"""Lightning callbacks nnlab adds to runs."""
