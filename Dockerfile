# Build: docker build -t kaizen-egress .
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
RUN swift build -c release --static-swift-stdlib --product kaizen-egress \
    && cp "$(swift build -c release --show-bin-path)/kaizen-egress" /kaizen-egress

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends libssl3 ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /kaizen-egress /usr/local/bin/kaizen-egress
USER 1337:1337
ENV KAIZEN_LISTEN=0.0.0.0 \
    PORT=8080
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kaizen-egress"]
