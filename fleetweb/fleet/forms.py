"""Dashboard forms.  Validation of policy fields is the model's (Group.clean, agent/window.py):
the forms only collect input and scope choices to the organization."""
from __future__ import annotations

from datetime import timedelta

from django import forms
from django.utils.text import slugify

from fleetweb.updates.models import Channel

from .choices import RebootStrategy
from .models import EnrollmentToken, Group


class GroupCreateForm(forms.Form):
    name = forms.CharField(max_length=100)
    channel = forms.ModelChoiceField(queryset=Channel.objects.none(), to_field_name="name", empty_label=None)

    def __init__(self, *args, organization, **kwargs):
        super().__init__(*args, **kwargs)
        self.organization = organization
        self.fields["channel"].queryset = organization.channels.all()
        self.fields["channel"].initial = "stable"

    def clean_name(self):
        name = self.cleaned_data["name"].strip()
        slug = slugify(name)
        if not slug:
            raise forms.ValidationError("Use at least one letter or digit.")
        if Group.objects.filter(organization=self.organization, slug=slug).exists():
            raise forms.ValidationError(f"A group named {name!r} already exists.")
        return name

    def save(self) -> Group:
        return Group.objects.create(organization=self.organization, name=self.cleaned_data["name"],
                                    slug=slugify(self.cleaned_data["name"])[:100],
                                    channel=self.cleaned_data["channel"])


class GroupSettingsForm(forms.ModelForm):
    """Reboot strategy, concurrency, window and when a lock holder counts as stuck; Group.clean()
    checks the values."""

    class Meta:
        model = Group
        fields = ["reboot_strategy", "max_concurrent_reboots", "reboot_window_start", "reboot_window_length",
                  "lock_stuck_after"]
        labels = {"max_concurrent_reboots": "Max concurrent reboots", "reboot_window_start": "Window start",
                  "reboot_window_length": "Window length", "lock_stuck_after": "Lock holder stuck after (s)"}
        help_texts = {"reboot_window_start": "HH:MM or Ddd HH:MM, host local time; empty: any time",
                      "reboot_window_length": "Go duration: 1h, 90m, 1h30m",
                      "lock_stuck_after": "A holder of the reboot lock offline this long is flagged stuck"}
        widgets = {"reboot_window_start": forms.TextInput(attrs={"placeholder": "sat 04:00"}),
                   "reboot_window_length": forms.TextInput(attrs={"placeholder": "2h"}),
                   "max_concurrent_reboots": forms.NumberInput(attrs={"min": 1}),
                   "lock_stuck_after": forms.NumberInput(attrs={"min": 10})}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Operators know the locksmith names: show them first, the explanation after.
        self.fields["reboot_strategy"].choices = [(v, f"{v} — {label}") for v, label in RebootStrategy.choices]


class TokenForm(forms.Form):
    group = forms.ModelChoiceField(queryset=Group.objects.none(), empty_label=None)
    name = forms.CharField(max_length=100, required=False)
    expires_in_hours = forms.IntegerField(min_value=1, max_value=24 * 365, required=False, initial=24,
                                          label="Expires in (hours)", help_text="Empty: never")
    max_uses = forms.IntegerField(min_value=1, max_value=EnrollmentToken.MAX_USES, required=False, label="Max uses",
                                  help_text="Empty: unlimited")

    def __init__(self, *args, organization, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["group"].queryset = Group.objects.filter(organization=organization)

    def expires_in(self) -> timedelta | None:
        hours = self.cleaned_data.get("expires_in_hours")
        return timedelta(hours=hours) if hours else None
