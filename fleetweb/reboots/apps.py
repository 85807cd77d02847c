from django.apps import AppConfig


class RebootsConfig(AppConfig):
    name = "fleetweb.reboots"
    label = "reboots"

    def ready(self):
        from django.db.models.signals import post_init, post_save

        from fleetweb.fleet import policy
        from fleetweb.fleet.models import Group

        from . import signals

        policy.contributor(signals.policy_fields)
        policy.host_contributor(signals.host_policy_fields)
        policy.reported_host_contributor(signals.reported_host_fields)
        post_init.connect(signals.remember_max, sender=Group, dispatch_uid="reboots-remember-max")
        post_save.connect(signals.max_changed, sender=Group, dispatch_uid="reboots-max-changed")
        signals.schedule_sync()
