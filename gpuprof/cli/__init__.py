"""The `gpuprof` command: a click group; each command parses, calls one library function, prints.

One module per command (or small family), so commands grow without touching each other.
"""

from __future__ import annotations

import click

from gpuprof import __version__
from gpuprof.errors import GpuprofError


class _Group(click.Group):
    """Turns a GpuprofError into its one sentence and exit status 1, never a traceback."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except GpuprofError as e:
            raise click.ClickException(str(e)) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="gpuprof")
def main() -> None:
    """Measure why large-batch LLM decoding stays memory-bound on your GPU, and turn it into serving advice."""


def _register() -> None:
    from gpuprof.cli import bench, decode, info, peaks, replicate

    for module in (info, peaks, bench, decode, replicate):
        main.add_command(module.command)


_register()
