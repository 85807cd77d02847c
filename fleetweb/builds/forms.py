"""The "new build" form: it only collects input; the rules are ``validate_request`` (models)."""
from __future__ import annotations

from django import forms

from fleetweb.updates.choices import ChannelName

from .choices import Platform


class BuildForm(forms.Form):
    version = forms.CharField(max_length=64, widget=forms.TextInput(attrs={"placeholder": "3815.2.0",
                                                                            "autocomplete": "off"}))
    channel = forms.ChoiceField(choices=ChannelName.choices, initial=ChannelName.ALPHA)
    platforms = forms.MultipleChoiceField(choices=Platform.choices, widget=forms.CheckboxSelectMultiple,
                                          initial=Platform.values, help_text="One task per platform")

    def clean_version(self):
        from .models import BuildRefused, validate_request

        version = self.cleaned_data["version"].strip()
        try:
            validate_request(version, ChannelName.ALPHA, [Platform.QEMU])   # the version rule alone
        except BuildRefused as exc:
            raise forms.ValidationError(exc.message) from None
        return version


class PublishForm(forms.Form):
    channel = forms.ChoiceField(choices=ChannelName.choices, initial=ChannelName.ALPHA)
