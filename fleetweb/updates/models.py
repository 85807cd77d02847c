from __future__ import annotations

from django.db import models
from django.utils import timezone

from .choices import ChannelName


class ChannelManager(models.Manager):
    def create_defaults(self, organization) -> list["Channel"]:
        return [self.get_or_create(organization=organization, name=c.value,
                                   defaults={"position": i})[0]
                for i, c in enumerate(ChannelName)]


class Channel(models.Model):
    organization = models.ForeignKey("tenancy.Organization", on_delete=models.CASCADE, related_name="channels")
    name = models.CharField(max_length=16, choices=ChannelName.choices)
    position = models.PositiveSmallIntegerField(default=0)
    created = models.DateTimeField(default=timezone.now)

    objects = ChannelManager()

    class Meta:
        ordering = ["position"]
        constraints = [models.UniqueConstraint(fields=["organization", "name"], name="unique_channel_name")]

    def __str__(self) -> str:
        return self.name

    @property
    def colour(self) -> str:
        return ChannelName.colour(self.name)
