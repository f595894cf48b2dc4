# Build: docker build -t kaizen-egress .   (and --target iptables-init for the pod's init container)
# Run:   docker run -p 8080:8080 -e KAIZEN_LOCAL=1 kaizen-egress
ARG SWIFT_VERSION=6.3

FROM swift:${SWIFT_VERSION}-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl-dev pkg-config \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Resolve packages in their own layer, so a source change does not fetch them again.
COPY Package.swift ./
RUN swift package resolve
COPY CSSL ./CSSL
COPY Sources ./Sources
COPY scripts/build-release.sh ./scripts/
# The same script `make test` builds and checks (scripts/smoke-release.sh): static Swift runtime.
RUN scripts/build-release.sh /kaizen-egress

# The pod's init container (needs NET_ADMIN): installs deploy/iptables.sh's rules, then exits.
#   docker build --target iptables-init -t kaizen-egress-init .
FROM debian:bookworm-slim AS iptables-init
RUN apt-get update \
    && apt-get install -y --no-install-recommends iptables \
    && rm -rf /var/lib/apt/lists/*
COPY deploy/iptables.sh /usr/local/bin/kaizen-iptables
ENTRYPOINT ["/bin/sh", "/usr/local/bin/kaizen-iptables"]

# The proxy (the default target).
FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /kaizen-egress /usr/local/bin/kaizen-egress
# The spool (actions not yet delivered) and the state (the destination baseline) live here; mount a volume
# on it to keep them across restarts.
RUN mkdir -p /var/lib/kaizen-egress && chown 1337:1337 /var/lib/kaizen-egress
WORKDIR /var/lib/kaizen-egress
USER 1337:1337
ENV KAIZEN_LISTEN=0.0.0.0 \
    PORT=8080 \
    KAIZEN_SPOOL_DIR=/var/lib/kaizen-egress/spool \
    KAIZEN_STATE_DIR=/var/lib/kaizen-egress/state \
    KAIZEN_ADMIN_LISTEN=0.0.0.0:9090
# 8080: explicit proxy (HTTPS_PROXY); 15001: transparent listener when KAIZEN_TRANSPARENT_PORT=15001 is set;
# 9090: admin (/metrics, /healthz, /readyz).
EXPOSE 8080 15001 9090
HEALTHCHECK --interval=10s --timeout=3s CMD ["/usr/local/bin/kaizen-egress", "probe"]
ENTRYPOINT ["/usr/local/bin/kaizen-egress"]
