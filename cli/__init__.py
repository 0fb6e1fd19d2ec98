"""The `hwdnal` command line: thin Typer commands over the library (installed as hwdnal.cli)."""
