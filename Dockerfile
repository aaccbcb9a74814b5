# focaldet on a CUDA-enabled PyTorch image. Build and run:
#   docker build -t focaldet .
#   docker run --gpus all --shm-size 8g -v "$PWD/runs:/workspace/focaldet/runs" focaldet \
#       train.max_iter=90000 hydra.run.dir=runs/r50
FROM pytorch/pytorch:2.5.1-cuda12.4-cudnn9-runtime

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1

WORKDIR /workspace/focaldet

# Dependencies first, so that code changes do not invalidate this layer.
COPY pyproject.toml README.md ./
COPY detector/__init__.py detector/__init__.py
COPY losses/__init__.py losses/__init__.py
COPY data/__init__.py data/__init__.py
RUN pip install --no-cache-dir .

COPY . .
RUN pip install --no-cache-dir --no-deps .

ENTRYPOINT ["python", "tools/train.py"]
