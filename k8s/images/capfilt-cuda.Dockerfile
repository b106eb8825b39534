# capfilt, CUDA build: GPU workers (`capfilt worker --device cuda:0`). Build from the repository root:
#   docker build -f k8s/images/capfilt-cuda.Dockerfile -t capfilt-cuda:0.1.0 .
# The `cuda` feature build plus onnxruntime-gpu's library and the CUDA 13 / cuDNN wheels it needs
# (scripts/fetch-onnxruntime.sh --gpu, sha256-pinned); the driver (libcuda.so.1) comes from the
# node through the NVIDIA container runtime.

FROM rust:1.95.0-slim-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p capfilt --features cuda \
    && strip target/release/capfilt

FROM python:3.11.11-slim-bookworm AS onnxruntime
WORKDIR /src
COPY scripts/fetch-onnxruntime.sh scripts/onnxruntime-cpu.lock.txt scripts/onnxruntime-gpu.lock.txt scripts/
RUN apt-get update \
    && apt-get install -y --no-install-recommends unzip=6.0-28 \
    && rm -rf /var/lib/apt/lists/*
RUN CAPFILT_ORT_DIR=/opt/onnxruntime scripts/fetch-onnxruntime.sh --gpu

FROM debian:bookworm-20250929-slim
RUN groupadd --gid 10001 capfilt \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin capfilt
COPY --from=build /src/target/release/capfilt /usr/local/bin/capfilt
COPY --from=onnxruntime /opt/onnxruntime/gpu /opt/onnxruntime/gpu
ENV ORT_DYLIB_PATH=/opt/onnxruntime/gpu/lib/libonnxruntime.so.1.31.1 \
    LD_LIBRARY_PATH=/opt/onnxruntime/gpu/lib \
    CAPFILT_CACHE=/var/cache/capfilt \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
ENTRYPOINT ["/usr/local/bin/capfilt"]
CMD ["--help"]
