from django.contrib import admin

from .models import ApiKey, Membership, Organization

admin.site.register(Organization)
admin.site.register(Membership)


@admin.register(ApiKey)
class ApiKeyAdmin(admin.ModelAdmin):
    list_display = ("name", "organization", "role", "created", "revoked_at")
    readonly_fields = ("lookup", "digest")
