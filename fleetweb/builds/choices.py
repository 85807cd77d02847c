from django.db import models


class BuildStatus(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"

    @classmethod
    def colour(cls, status: str) -> str:
        return {cls.QUEUED: "grey", cls.RUNNING: "blue", cls.SUCCEEDED: "green", cls.FAILED: "red",
                cls.CANCELLED: "orange"}.get(status, "grey")

    @classmethod
    def active(cls) -> tuple[str, ...]:
        return (cls.QUEUED, cls.RUNNING)

    @classmethod
    def final(cls) -> tuple[str, ...]:
        return (cls.SUCCEEDED, cls.FAILED, cls.CANCELLED)


class Platform(models.TextChoices):
    """The platforms imagebuilder wraps the disk for (imagebuilder.build.PLATFORMS, same order)."""
    PXE = "pxe", "PXE"
    AMI = "ami", "Amazon EC2 (AMI)"
    GCE = "gce", "Google Compute Engine"
    OPENSTACK = "openstack", "OpenStack"
    VIRTUALBOX = "virtualbox", "VirtualBox"
    VMWARE = "vmware", "VMware"
    VAGRANT = "vagrant", "Vagrant"
    QEMU = "qemu", "QEMU/KVM"


# The steps every build has besides one per platform (progress = finished steps / total steps).
STEP_PREPARE = "prepare"
STEP_FINISH = "sums"
