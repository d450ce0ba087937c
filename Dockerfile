# The served model in a container: MLflow's scoring server (POST /invocations, GET /ping) on port 5001.
# Build it from the repository root once the model is exported into ./served-model (docs/serving.md):
#   mlflow artifacts download --artifact-uri models:/chestxray@champion --dst-path served-model
#   docker build -t chestxray-model . && docker run --rm -p 5001:5001 chestxray-model
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
# The tested pins of requirements.txt (no dev tools); its `-e .` installs the package from src/.
COPY requirements.txt pyproject.toml LICENSE ./
COPY src ./src
RUN pip install --no-cache-dir -r requirements.txt \
    && groupadd --gid 10001 chestxray \
    && useradd --create-home --uid 10001 --gid 10001 chestxray

# Not root: the user made above, by number, which every runtime resolves.
COPY --chown=10001:10001 served-model /model
USER 10001:10001

EXPOSE 5001
# TensorFlow and the model take a while to load: /ping answers once the server is up.
HEALTHCHECK --interval=30s --timeout=10s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:5001/ping', timeout=5)"]
CMD ["mlflow", "models", "serve", "-m", "/model", "--env-manager", "local", "-h", "0.0.0.0", "-p", "5001"]
