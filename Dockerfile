# One image for the API, the workers and the migration; the CUDA build of torch runs on CPUs too.
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
WORKDIR /app
RUN pip install torch==2.14.1 torchvision==0.29.1
COPY pyproject.toml README.md ./
COPY api api
COPY worker worker
COPY shared shared
COPY migrations migrations
RUN pip install -e . flower
# Fetch the default weights into the image's model folder once, so no worker downloads at first job.
RUN STYLEQ_MODEL_DIR=/opt/styleq-models styleq weights pull vgg16-caffe
ENV STYLEQ_MODEL_DIR=/opt/styleq-models
# A named volume mounted here starts with this folder's owner, so the service can write it.
RUN useradd --system --home /var/lib/styleq styleq && mkdir -p /var/lib/styleq/storage && chown -R styleq /var/lib/styleq
USER styleq
