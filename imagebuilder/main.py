"""``imagebuilder`` CLI: a thin click layer over :mod:`imagebuilder.disk`."""
from __future__ import annotations

import json
import sys

import click

from imagebuilder import disk

EXIT_OK = 0
EXIT_BUILD_FAILED = 2


@click.group()
def cli() -> None:
    """Build Fleetweb disks and artifacts."""


@cli.command("disk")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="disk image file to write")
@click.option("--version", "version", required=True, help="OS version written to USR-A")
@click.option("--size-mib", default=disk.DEFAULT_DISK_MIB, show_default=True, type=click.IntRange(16))
@click.option("--usr-size-mib", default=disk.DEFAULT_USR_MIB, show_default=True, type=click.IntRange(4))
@click.option("--rootfs", type=click.Path(exists=True, file_okay=False), help="/usr tree to put on USR-A")
def disk_cmd(output: str, version: str, size_mib: int, usr_size_mib: int, rootfs: str | None) -> None:
    """Write a GPT disk image with the CoreOS layout (USR-A holds VERSION, USR-B is empty)."""
    try:
        table = disk.build_disk(output, version, size_mib=size_mib, usr_size_mib=usr_size_mib, rootfs=rootfs)
    except (disk.BuildError, OSError) as exc:
        click.echo(f"imagebuilder: error: {exc}", err=True)
        sys.exit(EXIT_BUILD_FAILED)
    for p in table.partitions:
        click.echo(f"{p.number:>2} {p.label:<11} {p.first_lba:>8}-{p.last_lba:<8} prio={p.priority} "
                   f"tries={p.tries} successful={int(p.successful)}")
    click.echo(f"wrote {output} ({size_mib} MiB, version {version})")


@cli.command("payload")
@click.option("--version", "version", required=True, help="OS version written to /share/coreos/release")
@click.option("--output", required=True, type=click.Path(dir_okay=False), help="payload file to write")
@click.option("--rootfs", type=click.Path(exists=True, file_okay=False), help="/usr tree to put in the payload")
@click.option("--size-mib", default=disk.DEFAULT_USR_MIB, show_default=True, type=click.IntRange(1),
              help="filesystem size; at most the USR partition size of the target disks")
@click.option("--json", "as_json", is_flag=True, help="print {path, version, size, sha256} as JSON")
def payload_cmd(version: str, output: str, rootfs: str | None, size_mib: int, as_json: bool) -> None:
    """Write an update payload: the USR filesystem image for VERSION (reproducible with SOURCE_DATE_EPOCH)."""
    try:
        info = disk.build_payload(output, version, rootfs=rootfs, size_mib=size_mib)
    except (disk.BuildError, OSError) as exc:
        click.echo(f"imagebuilder: error: {exc}", err=True)
        sys.exit(EXIT_BUILD_FAILED)
    if as_json:
        click.echo(json.dumps(info, sort_keys=True))
    else:
        click.echo(f"wrote {info['path']} (version {version}, {info['size']} bytes, sha256 {info['sha256']})")


if __name__ == "__main__":  # pragma: no cover
    cli()
