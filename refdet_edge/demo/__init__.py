"""What `make demo` runs besides the refdet commands: the choice of its starting weights and its closing summary."""
