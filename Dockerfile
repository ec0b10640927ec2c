# One image for every Tillstream service: `till serve <service>` picks which one runs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p till

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 till \
    && useradd --uid 10001 --gid till --no-create-home --shell /usr/sbin/nologin till \
    && mkdir /keys && chown till:till /keys   # the development issuer's key (a volume in compose)
COPY --from=build /src/target/release/till /usr/local/bin/till
# Never root; the numeric id lets Kubernetes check runAsNonRoot.
USER 10001:10001
# `till probe` asks the /livez of whichever service this container runs (the operations
# address its variables give).
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 CMD ["till", "probe"]
ENTRYPOINT ["till"]
