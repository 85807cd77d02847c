from django.apps import AppConfig


class CloudconfigConfig(AppConfig):
    name = "fleetweb.cloudconfig"
    label = "cloudconfig"

    def ready(self) -> None:
        from fleetweb.fleet import policy

        from . import signals

        policy.contributor(signals.policy_fields)
        policy.reported_contributor(signals.reported_fields)
        signals.connect()
