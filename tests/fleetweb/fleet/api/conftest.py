import pytest


@pytest.fixture
def token(web_group):
    """An enrollment token for the web group with 5 uses; ``token.secret`` is what an agent presents."""
    from fleetweb.fleet.models import EnrollmentToken

    token, secret = EnrollmentToken.objects.issue(web_group, max_uses=5)
    token.secret = secret
    return token
