import logging

from fleetweb.core.redact import RedactSecrets


def test_secret_url_segments_are_redacted_in_uvicorn_access_records():
    secret = "s3cr3tS3cr3tS3cr3tS3cr3t"
    paths = [f"/cloud-config/{secret}", f"/fleetlock/{secret}/v1/pre-reboot", f"/v1/update/{secret}/",
             f"/payloads/1/2/3/{secret}", f"/discovery?token={secret}"]
    for path in paths:
        record = logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, '%s - "%s %s HTTP/%s" %d',
                                   ("127.0.0.1:1", "GET", path, "1.1", 200), None)
        RedactSecrets().filter(record)
        assert secret not in record.getMessage() and "<redacted>" in record.getMessage()
