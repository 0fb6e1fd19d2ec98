"""Built-in target descriptions (*.toml), installed as package data of hwdnal.builtin_targets."""
