"""Library scoring: the one pipeline the CLI and the daemon call."""
