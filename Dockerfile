# One image for every Tillstream service: `till serve <service>` picks which one runs.
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p till

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /src/target/release/till /usr/local/bin/till
ENTRYPOINT ["till"]
