from django.apps import AppConfig
from django.conf import settings


class CallsConfig(AppConfig):
    name = "calls"
    verbose_name = "Calls"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from calls import conf, host

        # Before anything reads them: a host project need not set any CALLS_* setting.
        conf.install_defaults(settings)
        host.check()
