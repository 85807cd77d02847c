"""The one place that decides between a partial and a full page."""


def is_htmx(request) -> bool:
    return request.headers.get("HX-Request") == "true" and not request.headers.get("HX-History-Restore-Request")


def template_for(request, full: str, partial: str) -> str:
    return partial if is_htmx(request) else full
