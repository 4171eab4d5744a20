# One image for the API, the workers and the migration; the CUDA build of torch runs on CPUs too.
# tests/test_docker_image.py builds what this file builds without a Docker engine (the paths COPY copies,
# its RUN commands) and runs the image's entry points; hadolint lints it there too.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_ROOT_USER_ACTION=ignore
WORKDIR /app
# A pinned pip first (`styleq weights pull` reads the progress pip 24.1 and later report), then torch alone:
# gigabytes that change only with its pin, so a code change reuses this layer.
RUN pip install pip==26.3 && pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY api api
COPY cli cli
COPY worker worker
COPY shared shared
COPY migrations migrations
# Editable: the package `styleq` runs from the folders COPY put in /app (a plain install would copy them a second time).
# Flower for compose's `monitoring` profile.
RUN pip install -e . "flower>=2.0"
# The service's folders: model weights baked into the image, and the data directory (the secret key when
# STYLEQ_SECRET_KEY is unset, the embedded database and broker) on which compose mounts the images volume.
ENV STYLEQ_MODEL_DIR=/opt/styleq-models STYLEQ_DATA_DIR=/var/lib/styleq
# The default weights, once, so no worker downloads at its first job; pulled files are private to their
# owner (root here), so they are opened to the service's user. A named volume mounted on the data
# directory starts with its owner, so the service can write it. A numeric user, so that Kubernetes'
# runAsNonRoot can check it is not root.
RUN styleq weights pull vgg16-caffe \
    && chmod -R a+rX /opt/styleq-models \
    && useradd --system --uid 10001 --home-dir /var/lib/styleq styleq \
    && mkdir -p /var/lib/styleq/storage \
    && chown -R 10001 /var/lib/styleq
USER 10001
