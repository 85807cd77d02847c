def organization(request):
    return {"organization": getattr(request, "organization", None), "role": getattr(request, "role", None)}
