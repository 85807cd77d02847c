"""Dashboard forms for releases, channels and rollout policy.  They only collect input and scope
choices to the organization: the rules (version format, hash check, promotion, downgrade) are the
models' (Release.objects.create_from_upload, Channel.publish/promote/rollback, Group.clean)."""
from __future__ import annotations

from django import forms

from fleetweb.fleet.models import Group

from .models import Release


class ReleaseUploadForm(forms.Form):
    version = forms.CharField(max_length=64, widget=forms.TextInput(attrs={"placeholder": "3815.2.0",
                                                                            "autocomplete": "off"}))
    payload = forms.FileField(help_text="The USR filesystem image (imagebuilder payload)")
    sha256 = forms.CharField(max_length=64, required=False, label="Declared sha256",
                             help_text="Optional: the upload is refused if it does not match",
                             widget=forms.TextInput(attrs={"class": "mono", "autocomplete": "off",
                                                           "spellcheck": "false"}))
    notes = forms.CharField(max_length=2000, required=False, widget=forms.Textarea(attrs={"rows": 2}))

    def clean_sha256(self):
        return self.cleaned_data["sha256"].strip() or None


class ReleaseChoiceForm(forms.Form):
    """Choose one of the organization's releases (publish) or of a channel's history (rollback)."""
    release = forms.ModelChoiceField(queryset=Release.objects.none(), empty_label=None)

    def __init__(self, *args, releases, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["release"].queryset = releases


class RolloutPolicyForm(forms.ModelForm):
    """How fast a release rolls through the group; Group.clean() checks the values."""

    class Meta:
        model = Group
        fields = ["updates_enabled", "max_in_flight", "max_updates_per_period", "update_period", "update_timeout",
                  "safe_mode", "failure_threshold", "failure_threshold_percent"]
        labels = {"updates_enabled": "Updates enabled", "max_in_flight": "Max in flight (M)",
                  "max_updates_per_period": "Max updates per period (K)", "update_period": "Period P (s)",
                  "update_timeout": "Update timeout (s)", "safe_mode": "Safe mode",
                  "failure_threshold": "Failure threshold",
                  "failure_threshold_percent": "Threshold is a percentage"}
        help_texts = {"updates_enabled": "Unticked: rollouts to this group wait",
                      "max_in_flight": "Hosts updating at once",
                      "max_updates_per_period": "0 = no limit",
                      "update_period": "The window K counts in",
                      "update_timeout": "After this an update counts as failed",
                      "safe_mode": "The first host updates alone; halt if it fails",
                      "failure_threshold": "Failures that halt the rollout",
                      "failure_threshold_percent": "Read the threshold as % of the group's rollout"}
        widgets = {f: forms.NumberInput(attrs={"min": 0}) for f in
                   ("max_in_flight", "max_updates_per_period", "update_period", "update_timeout",
                    "failure_threshold")}

    def changes(self) -> dict:
        return {f: self.cleaned_data[f] for f in self.Meta.fields}
