"""The `--remote URL` option shared by every command that measures or builds."""

from __future__ import annotations

import typer

REMOTE_HELP = (
    "Measure and build on the device's hwdnal-agent instead of this machine: "
    "ssh://[user@]host[:port], tcp://host:port (token from HWDNAL_AGENT_TOKEN or the "
    "target's token_file) or exec:COMMAND. Overrides the target file's `remote`."
)


def remote_option() -> str | None:
    return typer.Option(None, "--remote", help=REMOTE_HELP)
