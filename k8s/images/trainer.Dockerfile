# capfilt's trainer stage (`python -m capfilt_trainer stage --spec URL`), run by the coordinator
# as a Kubernetes Job. Build from the repository root:
#   docker build -f k8s/images/trainer.Dockerfile -t capfilt-trainer:0.1.0 .
# torch comes from PyPI with its CUDA wheels, so the same image trains on a GPU node (the driver
# comes from the node) or on CPU.

FROM python:3.11.11-slim-bookworm AS build
WORKDIR /src
COPY trainer/ trainer/
RUN python -m venv /opt/venv \
    && /opt/venv/bin/pip install --no-cache-dir ./trainer

FROM python:3.11.11-slim-bookworm
RUN groupadd --gid 10001 capfilt \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin capfilt
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp
USER 10001:10001
ENTRYPOINT ["python", "-m", "capfilt_trainer"]
CMD ["--help"]
