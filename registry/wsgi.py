"""The WSGI application for gunicorn: ``gunicorn -c deploy/gunicorn.conf.py registry.wsgi:app``.

The one module that builds the app at import, because that is how WSGI servers load it;
settings come from ``MODELDROP_*`` environment variables. Conversion workers are not
started here: run ``modeldrop worker`` or Celery next to the web processes.
"""

import gc

from registry.app import create_app

app = create_app()
# Each gunicorn worker imports this module: build its S3 client now (no network I/O), so its
# first artifact download or redirect does not pay for botocore loading the S3 model.
app.extensions["modeldrop"].blobs.warm()

# Everything built so far (modules, the app, its services) lives as long as the process. A
# full (generation-2) collection walks every tracked object, and with this heap one took
# 61 ms in the middle of some request (docs/benchmarks.md, "third pass"); frozen objects are
# never walked again, so a full collection only looks at what requests made since.
gc.collect()
gc.freeze()
