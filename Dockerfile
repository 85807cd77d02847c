# Fleetweb application image: web (uvicorn), worker and beat all run from it.
FROM python:3.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    FLEET_VAR_DIR=/var/lib/fleetweb \
    FLEET_MEDIA_ROOT=/var/lib/fleetweb/media

# Tools the image builder calls (sfdisk, mkfs.ext4 -d, mkfs.vfat + mtools, mksquashfs, qemu-img),
# etcdctl for debugging, curl for health checks.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      e2fsprogs dosfstools mtools fdisk squashfs-tools qemu-utils etcd-client curl \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY requirements.txt pyproject.toml ./
RUN pip install -r requirements.txt
COPY . .
RUN pip install --no-deps -e . \
 && mkdir -p /var/lib/fleetweb/media /var/lib/fleetweb/beat \
 && useradd --system --home-dir /var/lib/fleetweb --shell /usr/sbin/nologin fleetweb \
 && chown -R fleetweb:fleetweb /var/lib/fleetweb

USER fleetweb
EXPOSE 8000
CMD ["uvicorn", "fleetweb.asgi:application", "--host", "0.0.0.0", "--port", "8000", "--ws-max-size", "1048576", \
     "--ws-ping-interval", "30", "--ws-ping-timeout", "120", "--ws-per-message-deflate", "false"]
