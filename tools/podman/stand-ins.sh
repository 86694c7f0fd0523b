#!/bin/sh
# Local stand-ins for the two registry images the SmartMixed compose stack needs, for hosts
# that cannot reach Docker Hub. Built from Debian bookworm with debootstrap and podman.
#
#   python:3.11.14-slim-bookworm  <- Debian bookworm minbase + python3 (3.11.2) + venv + pip,
#                                    `python`/`pip` on PATH, no PEP 668 marker (like the official image)
#   postgres:16.10-bookworm       <- Debian bookworm minbase + postgresql-15 (NOT 16: bookworm has 15)
#                                    with an entrypoint that honours POSTGRES_USER / POSTGRES_PASSWORD /
#                                    POSTGRES_DB / PGDATA like the official image; pg_isready on PATH.
#
# Usage (root, podman, debootstrap):  sh tools/podman/stand-ins.sh
# Env: MIRROR (default http://deb.debian.org/debian), ROOTFS (default /tmp/podman-rootfs),
#      EXTRA_CA_DIR: a folder of *.crt added to the python stand-in's trust store (for hosts
#      behind a TLS-intercepting egress proxy; empty = none).
set -eu
MIRROR=${MIRROR:-http://deb.debian.org/debian}
ROOTFS=${ROOTFS:-/tmp/podman-rootfs}
EXTRA_CA_DIR=${EXTRA_CA_DIR:-}
HERE=$(cd "$(dirname "$0")" && pwd)
WORK=$(mktemp -d /tmp/podman-stand-ins-ctx.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

# 1. Base: debootstrap minbase rootfs imported as localhost/debian-minbase:bookworm
if ! podman image exists localhost/debian-minbase:bookworm; then
    [ -x "$ROOTFS/bin/sh" ] || debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR"
    rm -rf "$ROOTFS"/var/lib/apt/lists/* "$ROOTFS"/var/cache/apt/archives/*.deb
    tar -C "$ROOTFS" -c . | podman import \
        --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        --change 'ENV LANG=C.UTF-8' --change 'CMD ["bash"]' \
        - localhost/debian-minbase:bookworm
fi

# 2. python:3.11.14-slim-bookworm stand-in
mkdir -p "$WORK/python/ca"
if [ -n "$EXTRA_CA_DIR" ]; then cp "$EXTRA_CA_DIR"/*.crt "$WORK/python/ca/"; fi
cat > "$WORK/python/Containerfile" <<'EOF'
FROM localhost/debian-minbase:bookworm
COPY ca/ /usr/local/share/ca-certificates/
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
       ca-certificates netbase tzdata python3 python3-venv python3-pip \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s /usr/bin/python3 /usr/local/bin/python \
    && ln -s /usr/bin/pip3 /usr/local/bin/pip \
    && rm -f /usr/lib/python3.11/EXTERNALLY-MANAGED
ENV LANG=C.UTF-8 PYTHON_VERSION=3.11-debian-bookworm-stand-in
CMD ["python3"]
EOF
podman build --pull=never -t docker.io/library/python:3.11.14-slim-bookworm "$WORK/python"

# 3. postgres:16.10-bookworm stand-in (PostgreSQL 15 from Debian)
mkdir -p "$WORK/postgres"
cp "$HERE/postgres-entrypoint.sh" "$WORK/postgres/docker-entrypoint.sh"
cat > "$WORK/postgres/Containerfile" <<'EOF'
FROM localhost/debian-minbase:bookworm
RUN mkdir -p /etc/postgresql-common \
    && echo 'create_main_cluster = false' > /etc/postgresql-common/createcluster.conf \
    && apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends postgresql-15 \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /var/run/postgresql /var/lib/postgresql/data \
    && chown -R postgres:postgres /var/run/postgresql /var/lib/postgresql \
    && chmod 2777 /var/run/postgresql
ENV PATH=/usr/lib/postgresql/15/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PGDATA=/var/lib/postgresql/data LANG=C.UTF-8
COPY docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
VOLUME /var/lib/postgresql/data
EXPOSE 5432
STOPSIGNAL SIGINT
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["postgres"]
EOF
chmod 755 "$WORK/postgres/docker-entrypoint.sh"
podman build --pull=never -t docker.io/library/postgres:16.10-bookworm "$WORK/postgres"

podman images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E 'python:3.11.14|postgres:16.10|debian-minbase'
