"""``imagebuilder`` CLI: a thin click layer over :mod:`imagebuilder.disk`."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import click

from imagebuilder import disk
from imagebuilder.build import PLATFORMS, BuildContext, ToolError, build_platform, prepare, write_sums

EXIT_OK = 0
EXIT_BUILD_FAILED = 2
EXIT_USAGE = 64


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


@cli.command("build")
@click.option("--version", "version", required=True, help="OS version (written to /share/coreos/release)")
@click.option("--channel", default="alpha", show_default=True, help="release channel the build is for")
@click.option("--platforms", default=",".join(PLATFORMS), show_default=True,
              help="comma list of: " + ", ".join(PLATFORMS))
@click.option("--output", required=True, type=click.Path(file_okay=False), help="directory for the artifacts")
@click.option("--rootfs", type=click.Path(exists=True), help="root filesystem: a directory or a tarball "
              "(its usr/ goes to USR); default: the busybox + Debian cloud kernel recipe")
@click.option("--kernel", type=click.Path(exists=True, dir_okay=False), help="kernel (vmlinuz) to boot")
@click.option("--initrd", type=click.Path(exists=True, dir_okay=False), help="initramfs to boot")
@click.option("--sign-key", type=click.Path(exists=True, dir_okay=False),
              help="raw 32-byte Ed25519 private key: sign SHA256SUMS (SHA256SUMS.sig)")
@click.option("--usr-size-mib", type=click.IntRange(8), help="USR partition size (default: from the rootfs)")
@click.option("--keep-work", is_flag=True, help="keep OUTPUT/_work (intermediate images)")
@click.option("--quiet", "-q", is_flag=True, help="print only the artifact table")
def build_cmd(version: str, channel: str, platforms: str, output: str, rootfs: str | None, kernel: str | None,
              initrd: str | None, sign_key: str | None, usr_size_mib: int | None, keep_work: bool,
              quiet: bool) -> None:
    """Build the disk and the platform artifacts (+ SHA256SUMS); reproducible with SOURCE_DATE_EPOCH."""
    wanted = [p.strip() for p in platforms.split(",") if p.strip()]
    bad = [p for p in wanted if p not in PLATFORMS]
    if bad or not wanted:
        click.echo(f"imagebuilder: error: --platforms: unknown {', '.join(bad) or '(none)'}; "
                   f"choose from {', '.join(PLATFORMS)}", err=True)
        sys.exit(EXIT_USAGE)
    if initrd and not kernel:
        click.echo("imagebuilder: error: --initrd needs --kernel", err=True)
        sys.exit(EXIT_USAGE)
    sign = None
    if sign_key:
        from agent import signing

        raw_key = open(sign_key, "rb").read()
        sign = lambda data: signing.sign_bytes(raw_key, data)  # noqa: E731
    log = (lambda line: None) if quiet else (lambda line: click.echo(line, err=True))
    try:
        ctx = BuildContext(workdir=Path(output), version=version, channel=channel, rootfs=rootfs, kernel=kernel,
                           initrd=initrd, source_date_epoch=disk.source_date_epoch(), log=log,
                           usr_size_mib=usr_size_mib)
        prepared = prepare(ctx)
        artifacts = [prepared.payload_artifact()]
        for platform in wanted:
            artifacts += build_platform(ctx, prepared, platform)
        artifacts += write_sums(ctx, artifacts, sign)
    except ToolError as exc:
        click.echo(f"imagebuilder: error: {exc}\n{exc.stderr.rstrip()}", err=True)
        sys.exit(EXIT_BUILD_FAILED)
    except (disk.BuildError, OSError) as exc:
        click.echo(f"imagebuilder: error: {exc}", err=True)
        sys.exit(EXIT_BUILD_FAILED)
    if not keep_work:
        shutil.rmtree(ctx.work, ignore_errors=True)
    for a in artifacts:
        click.echo(f"{a.platform:<10} {a.size:>12} {a.sha256}  {a.name}")


if __name__ == "__main__":  # pragma: no cover
    cli()
