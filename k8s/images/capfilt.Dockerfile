# capfilt, CPU build: the coordinator and CPU workers. Build from the repository root:
#   docker build -f k8s/images/capfilt.Dockerfile -t capfilt:0.1.0 .
# Stage 1 builds the release binary; stage 2 takes libonnxruntime out of the sha256-pinned PyPI
# wheel (scripts/fetch-onnxruntime.sh); the runtime stage is Debian slim with a non-root user.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p capfilt \
    && strip target/release/capfilt

FROM python:3.11.11-slim-bookworm AS onnxruntime
WORKDIR /src
COPY scripts/fetch-onnxruntime.sh scripts/onnxruntime-cpu.lock.txt scripts/onnxruntime-gpu.lock.txt scripts/
RUN apt-get update \
    && apt-get install -y --no-install-recommends unzip=6.0-28 \
    && rm -rf /var/lib/apt/lists/*
RUN CAPFILT_ORT_DIR=/opt/onnxruntime scripts/fetch-onnxruntime.sh --cpu

FROM debian:bookworm-20250929-slim
RUN groupadd --gid 10001 capfilt \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin capfilt
COPY --from=build /src/target/release/capfilt /usr/local/bin/capfilt
COPY --from=onnxruntime /opt/onnxruntime/cpu/lib /opt/onnxruntime/lib
ENV ORT_DYLIB_PATH=/opt/onnxruntime/lib/libonnxruntime.so.1.31.1 \
    CAPFILT_CACHE=/var/cache/capfilt
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/capfilt"]
CMD ["--help"]
