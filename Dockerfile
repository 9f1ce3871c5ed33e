# The tenant-key-operator image: one static binary and the CA certificates on an empty base,
# run as an unprivileged user (65532). Nothing in it writes to the file system, so it runs with
# a read-only root file system, and with no shell or package manager there is nothing else to
# patch.
#
# Where a registry is reachable, build everything from source (the default, last stage):
#
#   docker build -t tenant-key-operator .        # or: buildah bud -t tenant-key-operator .
#
# Without one, package a static binary built on the host (`cargo xtask image` does this with
# buildah, without a daemon, and checks the result):
#
#   cargo build --release --locked --target x86_64-unknown-linux-musl --bin tenant-key-operator
#   mkdir context
#   cp target/x86_64-unknown-linux-musl/release/tenant-key-operator context/
#   cp /etc/ssl/certs/ca-certificates.crt context/
#   buildah bud --target prebuilt -t tenant-key-operator -f Dockerfile context
#
# `prebuilt` comes before the build stage, so building it never pulls the Rust image.

ARG RUST_VERSION=1.89

# What every variant of the image shares. musl links the binary statically, so `scratch` needs
# no C library or loader; its resolver reads the /etc/resolv.conf the kubelet mounts.
FROM scratch AS base
# Imburse is reached over HTTPS, verified against these roots (the Kubernetes API against the
# service account's CA).
ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt
USER 65532:65532
ENTRYPOINT ["/tenant-key-operator"]
CMD ["run"]

# A static binary and the CA bundle, built and taken from the host (the build context).
FROM base AS prebuilt
COPY ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY tenant-key-operator /tenant-key-operator

# The build from source.
FROM docker.io/library/rust:${RUST_VERSION}-bookworm AS build
RUN apt-get update \
    && apt-get install -y --no-install-recommends musl-tools ca-certificates \
    && rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked --target x86_64-unknown-linux-musl --bin tenant-key-operator

FROM base AS runtime
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/x86_64-unknown-linux-musl/release/tenant-key-operator /tenant-key-operator
