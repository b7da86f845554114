"""The WSGI application for gunicorn: ``gunicorn -c deploy/gunicorn.conf.py registry.wsgi:app``.

The one module that builds the app at import, because that is how WSGI servers load it;
settings come from ``MODELDROP_*`` environment variables. Conversion workers are not
started here: run ``modeldrop worker`` or Celery next to the web processes.
"""

from registry.app import create_app

app = create_app()
# Each gunicorn worker imports this module: build its S3 client now (no network I/O), so its
# first artifact download or redirect does not pay for botocore loading the S3 model.
app.extensions["modeldrop"].blobs.warm()
