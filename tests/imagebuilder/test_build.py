"""imagebuilder build: every platform's artifacts, their formats and layouts, sums, signature, reproducibility."""
from __future__ import annotations

import json
import subprocess
import tarfile

import pytest

from agent import disk as gptdisk
from agent import signing
from imagebuilder import build
from imagebuilder.disk import file_sha256

from .conftest import run_build
from .test_disk import EXPECTED

P = build.PREFIX
ARTIFACTS = {
    "payload": [f"{P}_update.bin"],
    "pxe": [f"{P}_pxe.vmlinuz", f"{P}_pxe_image.cpio.gz"],
    "ami": [f"{P}_ami_image.bin", f"{P}_ami_vmdk_image.vmdk"],
    "gce": [f"{P}_gce.tar.gz"],
    "openstack": [f"{P}_openstack_image.qcow2"],
    "virtualbox": [f"{P}_virtualbox_image.vmdk", f"{P}_virtualbox.ovf", f"{P}_virtualbox.ova"],
    "vmware": [f"{P}_vmware_image.vmdk", f"{P}_vmware.vmx", f"{P}_vmware.ova"],
    "vagrant": [f"{P}_vagrant.box"],
    "qemu": [f"{P}_qemu_image.qcow2", f"{P}_qemu.sh", f"{P}_qemu.vmlinuz", f"{P}_qemu_initrd.cpio.gz"],
}
ALL = sorted(n for names in ARTIFACTS.values() for n in names)


def _img_info(path) -> dict:
    res = subprocess.run(["qemu-img", "info", "--output=json", str(path)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _to_raw(path, tmp_path):
    raw = tmp_path / (path.name + ".raw")
    subprocess.run(["qemu-img", "convert", "-O", "raw", str(path), str(raw)], check=True)
    return raw


def _oem_file(disk_path, name: str) -> str:
    table = gptdisk.read_gpt(disk_path)
    spec = f"{disk_path}?offset={table.get('OEM').offset()}"
    return subprocess.run(["debugfs", "-R", f"cat /{name}", spec], capture_output=True, text=True).stdout


def test_it_writes_every_platforms_artifacts_with_the_design_names(built):
    names = sorted(p.name for p in built.iterdir() if p.is_file())
    assert names == sorted(ALL + ["SHA256SUMS", "SHA256SUMS.sig"])


def test_qemu_img_confirms_qcow2_and_vmdk_subformats(built):
    for name in (f"{P}_openstack_image.qcow2", f"{P}_qemu_image.qcow2"):
        assert _img_info(built / name)["format"] == "qcow2"
    for name, kind in ((f"{P}_ami_vmdk_image.vmdk", "streamOptimized"),
                       (f"{P}_virtualbox_image.vmdk", "streamOptimized"),
                       (f"{P}_vmware_image.vmdk", "monolithicSparse")):
        info = _img_info(built / name)
        assert info["format"] == "vmdk"
        assert info["format-specific"]["data"]["create-type"] == kind
    raw_size = (built / f"{P}_ami_image.bin").stat().st_size
    assert _img_info(built / f"{P}_openstack_image.qcow2")["virtual-size"] == raw_size


def test_gce_tarball_holds_a_single_sparse_disk_raw(built):
    with tarfile.open(built / f"{P}_gce.tar.gz") as tar:
        members = tar.getmembers()
    assert [m.name for m in members] == ["disk.raw"]
    assert members[0].issparse() and members[0].size == (built / f"{P}_ami_image.bin").stat().st_size
    with open(built / f"{P}_gce.tar.gz", "rb") as fh:      # gzip without a name or mtime
        head = fh.read(10)
    assert head[3] & 0x08 == 0 and head[4:8] == b"\0\0\0\0"


@pytest.mark.parametrize("flavor", ["virtualbox", "vmware"])
def test_the_ova_starts_with_its_ovf_and_its_manifest_matches(built, flavor):
    with tarfile.open(built / f"{P}_{flavor}.ova") as tar:
        names = tar.getnames()
        assert names[0].endswith(".ovf") and names[1].endswith(".vmdk") and names[2].endswith(".mf")
        assert tar.getmembers()[0].type == tarfile.REGTYPE
        ovf = tar.extractfile(names[0]).read().decode()
        mf = tar.extractfile(names[2]).read().decode()
        import hashlib
        disk_sha = hashlib.sha256(tar.extractfile(names[1]).read()).hexdigest()
    assert f'ovf:href="{names[1]}"' in ovf and "streamOptimized" in ovf
    with open(built / f"{P}_{flavor}.ova", "rb") as fh:
        assert fh.read(512)[257:265] == b"ustar\x0000"          # POSIX ustar, as OVF 1.0 asks
    assert f"SHA256({names[1]})= {disk_sha}" in mf


def test_the_ovf_and_vmx_point_at_their_disks(built):
    ovf = (built / f"{P}_virtualbox.ovf").read_text()
    assert f'ovf:href="{P}_virtualbox_image.vmdk"' in ovf
    import xml.dom.minidom
    xml.dom.minidom.parseString(ovf)
    vmx = (built / f"{P}_vmware.vmx").read_text()
    assert f'scsi0:0.fileName = "{P}_vmware_image.vmdk"' in vmx


def _disk_controller(ovf_text: str) -> tuple[str, str]:
    """(ResourceType, ResourceSubType) of the controller the OVF's one hard disk hangs on."""
    import xml.etree.ElementTree as ET
    ns = {"o": "http://schemas.dmtf.org/ovf/envelope/1",
          "r": "http://schemas.dmtf.org/wbem/wscim/1/cim-schema/2/CIM_ResourceAllocationSettingData"}
    items = ET.fromstring(ovf_text).findall(".//o:VirtualHardwareSection/o:Item", ns)
    by_id = {i.findtext("r:InstanceID", namespaces=ns): i for i in items}
    [disk] = [i for i in items if i.findtext("r:ResourceType", namespaces=ns) == "17"]
    ctrl = by_id[disk.findtext("r:Parent", namespaces=ns)]
    return ctrl.findtext("r:ResourceType", namespaces=ns), ctrl.findtext("r:ResourceSubType", namespaces=ns)


def test_the_ovf_vmx_and_box_declare_controllers_the_cloud_kernel_drives(built):
    # no AHCI / LSI Logic (no ahci, mptspi in the cloud kernel): VirtualBox virtio-scsi (an OVF
    # "Other Storage Device", subtype VirtioSCSI, as VirtualBox 6.1+ reads it), VMware PVSCSI.
    ovfs = {"virtualbox.ovf": (built / f"{P}_virtualbox.ovf").read_text()}
    for flavor in ("virtualbox", "vmware"):
        with tarfile.open(built / f"{P}_{flavor}.ova") as tar:
            ovfs[f"{flavor}.ova"] = tar.extractfile(tar.getnames()[0]).read().decode()
    with tarfile.open(built / f"{P}_vagrant.box") as tar:
        ovfs["vagrant.box"] = tar.extractfile("box.ovf").read().decode()
    expected = {"virtualbox.ovf": ("20", "VirtioSCSI"), "virtualbox.ova": ("20", "VirtioSCSI"),
                "vagrant.box": ("20", "VirtioSCSI"), "vmware.ova": ("6", "VirtualSCSI")}
    assert {name: _disk_controller(text) for name, text in ovfs.items()} == expected
    for text in ovfs.values():
        assert "AHCI" not in text and "lsilogic" not in text.lower()
    vmx = (built / f"{P}_vmware.vmx").read_text()
    assert 'scsi0.virtualDev = "pvscsi"' in vmx and "lsilogic" not in vmx


def test_the_vagrant_box_has_metadata_vagrantfile_and_disk(built):
    with tarfile.open(built / f"{P}_vagrant.box") as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile("metadata.json").read())
    assert names == ["metadata.json", "Vagrantfile", "box.ovf", "box-disk1.vmdk"]
    assert meta["provider"] == "virtualbox" and meta["version"] == "4.2.0"


def test_the_gpt_layout_and_attributes_read_back_with_sfdisk_and_agent_disk(built):
    raw = built / f"{P}_ami_image.bin"
    table = gptdisk.read_gpt(raw)
    assert [(p.number, p.label, p.type_guid) for p in table.partitions] == EXPECTED
    a, b = table.get("USR-A"), table.get("USR-B")
    assert (a.priority, a.tries, a.successful) == (1, 0, True)
    assert (b.priority, b.tries, b.successful) == (0, 0, False)
    res = subprocess.run(["sfdisk", "--json", str(raw)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    pt = json.loads(res.stdout)["partitiontable"]
    assert pt["label"] == "gpt" and pt["id"].lower() == table.disk_guid
    by_name = {p["name"]: p for p in pt["partitions"]}
    assert [(int(p["node"].rsplit(str(raw), 1)[1]), p["name"], p["type"].lower()) for p in pt["partitions"]] \
        == EXPECTED
    assert by_name["USR-A"]["attrs"] == "GUID:48,56"         # priority 1 (bit 48), successful (bit 56)
    assert "attrs" not in by_name["USR-B"]
    assert by_name["ROOT"]["start"] + by_name["ROOT"]["size"] - 1 == table.last_usable
    assert gptdisk.read_release(raw, "USR-A")["COREOS_RELEASE_VERSION"] == "4.2.0"
    assert gptdisk.read_release(raw, "USR-B") is None
    efi = table.get("EFI-SYSTEM")
    listing = subprocess.run(["mdir", "-b", "-i", f"{raw}@@{efi.offset()}", "::"], capture_output=True,
                             text=True, env={"MTOOLS_SKIP_CHECK": "1"}).stdout
    assert "::/vmlinuz" in listing and "::/initrd.img" in listing and "::/loader/" in listing


def test_each_platform_disk_carries_its_own_platform_id_in_oem(built, tmp_path):
    assert "ID=ami" in _oem_file(built / f"{P}_ami_image.bin", "oem-release").splitlines()
    assert _oem_file(built / f"{P}_ami_image.bin", "platform") == "ami\n"
    qemu_raw = _to_raw(built / f"{P}_qemu_image.qcow2", tmp_path)
    assert _oem_file(qemu_raw, "platform") == "qemu\n"
    assert _oem_file(built / "_work" / "disk.raw", "platform") == "generic\n"
    # only the OEM partition differs between two platform disks
    table = gptdisk.read_gpt(qemu_raw)
    oem = table.get("OEM")
    a, b = (built / f"{P}_ami_image.bin").read_bytes(), qemu_raw.read_bytes()
    assert a[:oem.offset()] == b[:oem.offset()] and a[oem.offset() + oem.size():] == b[oem.offset() + oem.size():]


def test_the_payload_is_the_usr_image_and_signs_as_a_release(built, signing_key):
    payload = built / f"{P}_update.bin"
    release = subprocess.run(["debugfs", "-R", f"cat {gptdisk.RELEASE_PATH}", str(payload)], capture_output=True,
                             text=True).stdout
    assert gptdisk.parse_release(release)["COREOS_RELEASE_VERSION"] == "4.2.0"
    raw, public = signing_key
    sha = file_sha256(payload)
    sig = signing.sign(raw.read_bytes(), "4.2.0", payload.stat().st_size, sha)
    signing.verify(public, sig, "4.2.0", payload.stat().st_size, sha)


def test_sha256sums_lists_every_artifact_and_its_signature_verifies(built, signing_key):
    text = (built / "SHA256SUMS").read_text()
    lines = dict(reversed(line.split("  ")) for line in text.splitlines())
    assert sorted(lines) == ALL
    for name, sha in lines.items():
        assert file_sha256(built / name) == sha
    sig = (built / "SHA256SUMS.sig").read_text()
    signing.verify_bytes(signing_key[1], sig, text.encode())
    with pytest.raises(signing.SignatureError):
        signing.verify_bytes(signing_key[1], sig, text.encode().replace(b"4", b"5", 1))


def test_the_same_inputs_and_epoch_give_byte_identical_artifacts(built, tmp_path):
    """A second build through the Python API: raw disk, qcow2, vmdk, tar.gz, ova, cpio.gz all identical."""
    logs = []
    ctx = build.BuildContext(workdir=tmp_path / "again", version="4.2.0", channel="beta",
                             source_date_epoch=int(__import__("tests.imagebuilder.conftest",
                                                              fromlist=["EPOCH"]).EPOCH),
                             log=logs.append)
    prepared = build.prepare(ctx)
    arts = [prepared.payload_artifact()]
    for platform in build.PLATFORMS:
        arts += build.build_platform(ctx, prepared, platform)
    build.write_sums(ctx, arts, None)
    assert (tmp_path / "again" / "SHA256SUMS").read_text() == (built / "SHA256SUMS").read_text()
    assert file_sha256(prepared.disk) == file_sha256(built / "_work" / "disk.raw")
    assert any(line.startswith("$ ") and "qemu-img convert" in line for line in logs)
    assert {a.platform for a in arts} == set(build.PLATFORMS) | {"payload"}


def test_a_prepared_build_is_picked_up_by_another_process(built, tmp_path):
    prepared = build.Prepared.load(built)
    assert prepared.version == "4.2.0" and prepared.disk.exists()
    ctx = build.BuildContext(workdir=built, version="4.2.0", channel="beta", source_date_epoch=prepared.epoch)
    arts = build.build_platform(ctx, prepared, "openstack")
    assert [(a.name, a.sha256) for a in arts] == [(f"{P}_openstack_image.qcow2",
                                                   file_sha256(built / f"{P}_openstack_image.qcow2"))]


def test_a_failing_tool_keeps_its_stderr(tmp_path):
    from imagebuilder.disk import run_tool
    with pytest.raises(build.ToolError) as err:
        run_tool(["qemu-img", "info", str(tmp_path / "missing.img")])
    assert err.value.tool == "qemu-img" and err.value.returncode != 0
    assert "missing.img" in err.value.stderr


def test_a_cancelled_build_stops_before_the_next_step(tmp_path):
    ctx = build.BuildContext(workdir=tmp_path / "c", version="1", cancelled=lambda: True)
    with pytest.raises(build.Cancelled):
        build.prepare(ctx)


def test_it_refuses_unknown_platforms(tmp_path):
    res = run_build(tmp_path / "x", "--version", "1", "--platforms", "pxe,amiga")
    assert res.returncode == 64 and "amiga" in res.stderr
    with pytest.raises(build.BuildError, match="unknown platform"):
        build.build_platform(build.BuildContext(workdir=tmp_path, version="1"), None, "amiga")


def test_a_rootfs_tarball_goes_to_usr(tmp_path):
    tree = tmp_path / "tree"
    (tree / "usr" / "bin").mkdir(parents=True)
    (tree / "usr" / "bin" / "hello").write_text("#!/bin/sh\necho hello\n")
    (tree / "etc").mkdir()
    with tarfile.open(tmp_path / "rootfs.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname=".")
    out = tmp_path / "out"
    res = run_build(out, "--version", "5.0.0", "--platforms", "gce", "--rootfs", str(tmp_path / "rootfs.tar.gz"))
    assert res.returncode == 0, res.stderr[-3000:]
    cat = subprocess.run(["debugfs", "-R", "cat /bin/hello", str(out / f"{P}_update.bin")], capture_output=True,
                         text=True).stdout
    assert cat == "#!/bin/sh\necho hello\n"
    assert not (out / "_work").exists()
    assert "fleetweb_production_gce.tar.gz" in (out / "SHA256SUMS").read_text()


def test_the_efi_system_partition_carries_systemd_boot_and_its_entries(built, tmp_path):
    raw = built / f"{P}_ami_image.bin"
    efi = gptdisk.read_gpt(raw).get("EFI-SYSTEM")
    spec = f"{raw}@@{efi.offset()}"

    def mtype(name: str) -> bytes:
        res = subprocess.run(["mtype", "-i", spec, f"::{name}"], capture_output=True,
                             env={"MTOOLS_SKIP_CHECK": "1", "PATH": "/usr/bin:/bin"})
        assert res.returncode == 0, res.stderr
        return res.stdout

    loader = mtype("/EFI/BOOT/BOOTX64.EFI")
    assert loader[:2] == b"MZ" and b"systemd-boot" in loader                  # a PE image: systemd-boot
    assert mtype("/loader/loader.conf").decode().splitlines()[0] == "default fleetweb.conf"
    default = mtype("/loader/entries/fleetweb.conf").decode()
    assert "linux /vmlinuz\ninitrd /initrd.img\n" in default and "mount.usr" not in default
    for label in ("USR-A", "USR-B"):
        assert f"mount.usr=PARTLABEL={label}" in mtype(f"/loader/entries/{label.lower()}.conf").decode()
    assert mtype("/vmlinuz") == (built / f"{P}_pxe.vmlinuz").read_bytes()
